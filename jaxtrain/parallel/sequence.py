"""Attention under the ambient mesh, with Ulysses sequence parallelism.

`attention` has `kernels.attention`'s signature. Without a mesh (or on one device) it calls the
kernel directly. Otherwise it runs the kernel inside `shard_map`, so Pallas kernels (which the
SPMD partitioner cannot split) see local shapes: batch split over the batch axes (data, fsdp,
expert), heads over `tensor`, and, when the sequence is split over `sequence`, an all-to-all
around the kernel swaps sequence sharding for head sharding (Ulysses):

  q [b, T/sp, h, D] --all_to_all(split heads, gather time)--> [b, T, h/sp, D] -> kernel
  out [b, T, h/sp, D] --all_to_all(split time, gather heads)--> [b, T/sp, h, D]

Each device then attends over the whole sequence for h/sp of its heads, so causal masks,
sliding windows and packed-document masks work unchanged: segment ids (and explicit positions,
when given) are all-gathered along the sequence. Key/value heads fewer than (or not a multiple
of) the split are repeated to lcm(kv_heads, split) heads before the exchange (each query group
still sees exactly its own key/value head), which moves no more data than gathering K/V whole.
The math per (row, head) is the kernel's own, so results equal the unsharded call.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxtrain import kernels
from jaxtrain.parallel import collectives as col
from jaxtrain.parallel.rules import logical_to_spec


def _repeat_heads(x, target: int):
  """[b, t, kvh, d] -> [b, t, target, d], each head repeated target / kvh times (GQA order)."""
  kvh = x.shape[2]
  return x if kvh == target else jnp.repeat(x, target // kvh, axis=2)


def _select_heads(x, parts: int, axis):
  """The `axis_index(axis)`-th of `parts` equal head blocks of x [b, t, heads, d]."""
  block = x.shape[2] // parts
  return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis) * block, block, axis=2)


def sharded_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                      causal=True, sliding_window=None, sinks=None, scale=None, impl="auto", mesh=None):
  """`kernels.attention` inside `shard_map` over `mesh` (default: the ambient mesh), whatever
  its size (so this path can be checked on one device). Self-attention only (T == S)."""
  mesh = col.ambient_mesh() if mesh is None else mesh
  B, T, H, D = q.shape
  KVH = k.shape[2]
  if k.shape[1] != T:
    raise ValueError(f"sharded attention is for self-attention; got {T} queries and {k.shape[1]} keys")
  q_spec = logical_to_spec(("act_batch", "act_seq", "act_heads", None), q.shape, mesh)
  batch, seq, heads = (col.spec_entry(q_spec, i) for i in range(3))
  kv_heads = col.spec_entry(logical_to_spec(("act_batch", "act_seq", "act_kv_heads", None), k.shape, mesh), 2)
  tp = col.size_of(mesh, heads)
  sp = col.size_of(mesh, seq)
  if sp > 1 and (H // tp) % sp:
    # Ulysses needs whole heads per device; without it keep the sequence whole (mesh.check_sizes
    # rejects such configs for training, so this is for odd shapes such as generation).
    seq, sp = (), 1
  if kv_heads != heads and kv_heads:
    raise ValueError(f"kv heads shard over {kv_heads} but query heads over {heads}")
  kv_split = bool(kv_heads)  # False: K/V arrive whole over the tensor axes (KVH % tp != 0)
  b_, s_, h_ = col.as_entry(batch), col.as_entry(seq), col.as_entry(heads)
  qs = PartitionSpec(b_, s_, h_, None)
  ks = PartitionSpec(b_, s_, h_ if kv_split else None, None)
  seg_spec = PartitionSpec(b_, s_)
  checked = col.checks_vma("attention", impl)
  sp_axis = col.axis_name(seq) if seq else None
  tp_axis = col.axis_name(heads) if heads else None

  def body(q, k, v, q_seg, kv_seg, q_pos, kv_pos, sinks):
    if tp > 1 and not kv_split:  # this tensor rank's query heads need these kv heads
      L = math.lcm(KVH, tp)
      k, v = (_select_heads(_repeat_heads(a, L), tp, tp_axis) for a in (k, v))
    if sp > 1:
      kvh = k.shape[2]
      k, v = (_repeat_heads(a, math.lcm(kvh, sp)) for a in (k, v))
      gather = lambda a: None if a is None else jax.lax.all_gather(a, sp_axis, axis=1, tiled=True)  # noqa: E731
      q_seg, kv_seg, q_pos, kv_pos = map(gather, (q_seg, kv_seg, q_pos, kv_pos))
      q, k, v = (jax.lax.all_to_all(a, sp_axis, 2, 1, tiled=True) for a in (q, k, v))
      if sinks is not None:
        h = sinks.shape[0] // sp
        sinks = jax.lax.dynamic_slice_in_dim(sinks, jax.lax.axis_index(sp_axis) * h, h)
    q, k, v, q_seg, kv_seg, q_pos, kv_pos, sinks = col.match_varying(q, k, v, q_seg, kv_seg, q_pos, kv_pos, sinks,
                                                                      checked=checked)
    out = kernels.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos,
                            kv_positions=kv_pos, causal=causal, sliding_window=sliding_window, sinks=sinks,
                            scale=scale, impl=impl)
    if sp > 1:
      out = jax.lax.all_to_all(out, sp_axis, 1, 2, tiled=True)
    return out

  args = (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, sinks)
  specs = (qs, ks, ks, seg_spec, seg_spec, seg_spec, seg_spec, PartitionSpec(h_))
  present = [i for i, a in enumerate(args) if a is not None]

  def call(*xs):
    full = [None] * len(args)
    for i, x in zip(present, xs):
      full[i] = x
    return body(*full)

  fn = col.shard_map(call, mesh=mesh, in_specs=tuple(specs[i] for i in present), out_specs=qs, check=checked)
  return fn(*(args[i] for i in present))


def attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
              causal=True, sliding_window=None, sinks=None, scale=None, impl="auto"):
  """`kernels.attention` under the ambient mesh: direct without one (or on one device),
  else `sharded_attention` (batch/head split, Ulysses over `sequence`)."""
  mesh = col.ambient_mesh()
  if mesh is None or col.mesh_size(mesh) == 1 or k.shape[1] != q.shape[1]:
    return kernels.attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                             q_positions=q_positions, kv_positions=kv_positions, causal=causal,
                             sliding_window=sliding_window, sinks=sinks, scale=scale, impl=impl)
  return sharded_attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                           q_positions=q_positions, kv_positions=kv_positions, causal=causal,
                           sliding_window=sliding_window, sinks=sinks, scale=scale, impl=impl, mesh=mesh)
