"""Routed-expert computation: token movement (dispatch -> expert FFN -> combine) behind one
entry point, `routed_experts`. Implementations:

- dropless: sort token copies by expert, grouped matmul (`jaxtrain.kernels.gmm`), un-sort and
  combine with the routing weights. No token is ever dropped.
- capacity: each expert takes at most C = ceil(capacity_factor * assignments / experts) token
  copies in token order; the rest are dropped (and counted).

Assignments marked invalid (padding tokens) are routed nowhere and cost no expert FLOPs.

Under a mesh with more than one device, dropless runs inside `shard_map` (expert parallel):
each device routes its own tokens, sends each token copy to the device that owns its expert
(`mesh.expert` axis), runs the grouped matmul on what it received, and sends the results back.
Expert weights enter gathered over fsdp (ZeRO-3: the gather happens at this op) and with their
`moe_mlp` dimension split over `tensor` (partial sums added with one psum). The exchange is
`padded` (fixed worst-case buffers + `all_to_all`, any backend) or `ragged`
(`lax.ragged_all_to_all`, GPU/TPU); `auto` picks by backend. See `dropless_sharded`.
Capacity mode stays on GSPMD (plain einsums the partitioner shards; same numbers as 1 device).

Optional expert biases and gated unit (GPT-OSS): `gate_up_bias` `[X, 2, I]` is added to each
row's gate/up projection inside the expert FFN (sharded like `gate_up`), `down_bias` `[X, E]`
enters the combine as sum_k w_k * down_bias[e_k] (so a tensor-split hidden dim never adds it
twice), and `glu(gate, up)` replaces `act(gate) * up`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxtrain import kernels
from jaxtrain.kernels.moe_blocked import blocked_expert_ffn
from jaxtrain.parallel import collectives as col
from jaxtrain.parallel.rules import current_rules, logical_to_spec

log = logging.getLogger("jaxtrain.parallel")

EXCHANGES = ("auto", "ragged", "padded")
RAGGED_BACKENDS = ("gpu", "tpu")  # where XLA implements ragged-all-to-all


def _gated(h, act, glu):
  """h `[..., 2, I]` (gate, up) -> `[..., I]`."""
  gate, up = h[..., 0, :], h[..., 1, :]
  return act(gate) * up if glu is None else glu(gate, up)


def _expert_ffn_grouped(rows, group_sizes, gate_up, down, act, impl, gate_up_bias=None, glu=None):
  """rows `[M, E]` grouped by expert; gate_up `[X, E, 2, I]`; down `[X, I, E]`; optional
  gate_up_bias `[X, 2, I]`."""
  X, E, _, I = gate_up.shape
  h = kernels.gmm(rows, gate_up.reshape(X, E, 2 * I), group_sizes, impl=impl).reshape(-1, 2, I)
  if gate_up_bias is not None:
    row_expert = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(h.shape[0]), side="right")
    h = h + jnp.take(gate_up_bias, jnp.minimum(row_expert, X - 1), axis=0).astype(h.dtype)
  return kernels.gmm(_gated(h, act, glu), down, group_sizes, impl=impl)


def _down_bias_term(expert_ids, weights, valid, down_bias):
  """sum_k w_k * down_bias[e_k] per token `[N, E]` (zero for invalid tokens)."""
  b = jnp.take(down_bias, expert_ids, axis=0)  # [N, K, E]
  w = jnp.where(valid[:, None], weights, 0).astype(b.dtype)
  return jnp.einsum("nke,nk->ne", b, w)


def _sort_by_expert(flat_ids, num_experts):
  """Stable order of assignments by expert id (invalid id == num_experts sorts last)."""
  order = jnp.argsort(flat_ids, stable=True)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat_ids].add(1, mode="drop")
  return order, counts


def dropless(x, expert_ids, weights, valid, gate_up, down, *, act, impl, gate_up_bias=None, glu=None):
  if kernels.resolve("gmm", impl)[0] == "blocked":  # the CPU path: dispatch straight into padded blocks
    out, counts = blocked_expert_ffn(x, expert_ids, weights, valid, gate_up, down, gate_up_bias=gate_up_bias,
                                     glu=glu or (lambda gate, up: act(gate) * up))
    return out, counts, jnp.zeros((), jnp.int32)
  N, K = expert_ids.shape
  X = gate_up.shape[0]
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
  order, counts = _sort_by_expert(flat, X)
  rows = jnp.take(x, order // K, axis=0)
  y_sorted = _expert_ffn_grouped(rows, counts, gate_up, down, act, impl, gate_up_bias, glu)
  y = jnp.zeros_like(y_sorted).at[order].set(y_sorted, unique_indices=True)
  out = jnp.einsum("nke,nk->ne", y.reshape(N, K, -1), weights.astype(y.dtype))
  return out, counts, jnp.zeros((), jnp.int32)


def capacity_slots(flat_ids, num_experts, capacity):
  """Slot of each assignment in an [experts * capacity] buffer (token order decides who fits);
  dropped and invalid assignments get slot experts * capacity (out of range)."""
  order, counts = _sort_by_expert(flat_ids, num_experts)
  starts = jnp.cumsum(counts) - counts
  sorted_ids = flat_ids[order]
  rank_sorted = jnp.arange(flat_ids.shape[0]) - jnp.take(starts, jnp.minimum(sorted_ids, num_experts - 1))
  rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted, unique_indices=True)
  keep = (flat_ids < num_experts) & (rank < capacity)
  return jnp.where(keep, flat_ids * capacity + rank, num_experts * capacity), keep, counts


def capacity(x, expert_ids, weights, valid, gate_up, down, *, act, capacity_factor, gate_up_bias=None,
             down_bias=None, glu=None):
  N, K = expert_ids.shape
  X, E, _, I = gate_up.shape
  C = max(1, math.ceil(capacity_factor * N * K / X))
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
  slot, keep, counts = capacity_slots(flat, X, C)
  tokens = jnp.repeat(x, K, axis=0)
  buf = jnp.zeros((X * C, E), x.dtype).at[slot].set(tokens, mode="drop").reshape(X, C, E)
  h = jnp.einsum("xce,xefi->xcfi", buf, gate_up)
  if gate_up_bias is not None:
    h = h + gate_up_bias[:, None].astype(h.dtype)
  y_buf = jnp.einsum("xci,xie->xce", _gated(h, act, glu), down)
  if down_bias is not None:  # dropped assignments get nothing, bias included
    y_buf = y_buf + down_bias[:, None].astype(y_buf.dtype)
  y_buf = y_buf.reshape(X * C, E)
  y = jnp.take(y_buf, slot, axis=0, mode="fill", fill_value=0)
  out = jnp.einsum("nke,nk->ne", y.reshape(N, K, E), weights.astype(y.dtype))
  dropped = jnp.sum(flat < X) - jnp.sum(keep)
  return out, counts, dropped.astype(jnp.int32)


# -- expert parallel (shard_map) ---------------------------------------------------------------

_exchange: contextvars.ContextVar[str] = contextvars.ContextVar("jaxtrain_expert_exchange", default="auto")
# Test hook: a stand-in for `lax.ragged_all_to_all` (e.g. `emulated_ragged_all_to_all`), which
# XLA:CPU does not implement; when set, "ragged" is allowed on any backend.
_ragged_impl: Callable | None = None
_logged: set[str] = set()


@contextlib.contextmanager
def exchange_context(exchange: str):
  """Sets the expert exchange ("auto" | "ragged" | "padded") for MoE layers traced inside.
  `mesh_context(mesh, expert_exchange=...)` enters this; the value is read at trace time."""
  if exchange not in EXCHANGES:
    raise ValueError(f"expert exchange {exchange!r} is not one of {EXCHANGES}")
  token = _exchange.set(exchange)
  try:
    yield
  finally:
    _exchange.reset(token)


def current_exchange() -> str:
  return _exchange.get()


def ragged_supported(backend: str | None = None) -> bool:
  return _ragged_impl is not None or (backend or jax.default_backend()) in RAGGED_BACKENDS


def resolve_exchange(exchange: str) -> str:
  """"auto" -> "ragged" on GPU/TPU, "padded" elsewhere. "ragged" where XLA lacks
  ragged-all-to-all (CPU) is an error, not a silent fallback."""
  if exchange not in EXCHANGES:
    raise ValueError(f"expert exchange {exchange!r} is not one of {EXCHANGES}")
  if exchange == "auto":
    return "ragged" if ragged_supported() else "padded"
  if exchange == "ragged" and not ragged_supported():
    raise ValueError(f"expert exchange 'ragged' needs lax.ragged_all_to_all, which the {jax.default_backend()!r} "
                     f"backend does not implement (GPU/TPU only); use mesh.expert_exchange='padded' or 'auto'")
  return exchange


@dataclasses.dataclass(frozen=True)
class ExpertPlan:
  """How one MoE call is laid out over the ambient mesh."""
  token_axes: tuple[str, ...]  # the token dimension's mesh axes (batch and sequence axes)
  ep_axes: tuple[str, ...]  # mesh axes the experts are split over (the exchange group)
  tp_axes: tuple[str, ...]  # mesh axes the expert hidden dimension is split over
  ep_size: int
  exchange: str  # "none" (no exchange: all experts local), "padded" or "ragged"


def _log_once(message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    log.info(message)


def plan(num_tokens: int, hidden: int, gate_up_shape, down_shape, exchange: str) -> ExpertPlan | None:
  """The shard_map layout for the ambient mesh, or None to run dropless locally (no mesh, a
  single device with exchange "auto", or token counts that do not split over the mesh)."""
  mesh = col.ambient_mesh()
  if exchange not in EXCHANGES:
    raise ValueError(f"expert exchange {exchange!r} is not one of {EXCHANGES}")
  if mesh is None or (col.mesh_size(mesh) == 1 and exchange == "auto"):
    return None
  tok = col.spec_entry(logical_to_spec(("act_tokens", None), (num_tokens, hidden), mesh), 0)
  gu = logical_to_spec(("expert", None, None, "moe_mlp"), gate_up_shape, mesh)
  dn = logical_to_spec(("expert", "moe_mlp", None), down_shape, mesh)
  ep, tp = col.spec_entry(gu, 0), col.spec_entry(gu, 3)
  if col.spec_entry(dn, 0) != ep or col.spec_entry(dn, 1) != tp:
    raise ValueError(f"expert weights shard inconsistently: gate_up {gu}, down {dn}")
  if not ep and exchange != "auto":
    # A forced exchange with no expert split (one device, or mesh.expert=1): exchange over the
    # expert rule's (size-1) axes, so the exchange code runs and can be checked on one device.
    rule = current_rules()["expert"]
    ep = tuple(a for a in col.axes_of(rule) if a in mesh.shape and mesh.shape[a] == 1)[:1]
    tok = tok + ep
  if not set(ep) <= set(tok) or set(tp) & set(tok):
    _log_once(f"MoE: {num_tokens} tokens do not split over the expert axes {ep} of mesh {dict(mesh.shape)}; "
              "running dropless under the SPMD partitioner instead of expert parallel")
    return None
  kind = resolve_exchange(exchange) if ep else "none"
  if exchange == "auto" and ep and col.size_of(mesh, ep) == 1:
    kind = "none"
  return ExpertPlan(token_axes=tok, ep_axes=ep, tp_axes=tp, ep_size=col.size_of(mesh, ep) if ep else 1,
                    exchange=kind)


def _segment_positions(sizes_2d):
  """For row-major segments `sizes_2d[s, e]`: exclusive prefix over e within each row."""
  return jnp.cumsum(sizes_2d, axis=1) - sizes_2d


def _padded_exchange(rows, sorted_ids, counts, ffn, *, P, Xl, C, axis):
  """Dispatch/compute/combine with fixed buffers: each device sends peer d a [C, E] block
  holding the token copies for d's experts (zero padded), via one `all_to_all` each way.

  C = n * min(K, Xl) is the most copies n local tokens can send to one peer (top-k picks
  distinct experts, and a peer owns Xl of them), so nothing is ever dropped. Received rows are
  scattered into expert-major order (positions computed from the exchanged counts, no sort)."""
  nK, E = rows.shape
  R = P * C
  send = counts.reshape(P, Xl).sum(axis=1)  # [P] copies for each peer
  dest = sorted_ids // Xl  # P for invalid assignments (id == X)
  start = jnp.cumsum(send) - send
  j = jnp.arange(nK, dtype=jnp.int32) - jnp.take(start, jnp.minimum(dest, P - 1))
  slot = jnp.where(dest < P, dest * C + j, R)
  buf = jnp.zeros((R, E), rows.dtype).at[slot].set(rows, mode="drop", unique_indices=True)
  recv = jax.lax.all_to_all(buf.reshape(P, C, E), axis, 0, 0, tiled=True).reshape(R, E)
  recv_counts = jax.lax.all_to_all(counts.reshape(P, Xl), axis, 0, 0, tiled=True)  # [src, local expert]
  # Received row (s, j) -> its local expert e and its row in expert-major, source-minor order.
  ends = jnp.cumsum(recv_counts, axis=1)  # [P, Xl]
  jj = jnp.arange(C, dtype=jnp.int32)
  e = jax.vmap(lambda c: jnp.searchsorted(c, jj, side="right"))(ends).astype(jnp.int32)  # [P, C]; Xl = padding
  sizes = jnp.sum(recv_counts, axis=0)  # [Xl]
  expert_start = jnp.cumsum(sizes) - sizes
  src_prefix = jnp.cumsum(recv_counts, axis=0) - recv_counts  # [P, Xl]
  ec = jnp.minimum(e, Xl - 1)
  src = jnp.arange(P, dtype=jnp.int32)[:, None]
  within = jj[None, :] - (ends - recv_counts)[src, ec]
  pos = jnp.where(e < Xl, expert_start[ec] + src_prefix[src, ec] + within, R).reshape(R)
  grouped = jnp.zeros((R, E), rows.dtype).at[pos].set(recv, mode="drop", unique_indices=True)
  y = ffn(grouped, sizes)
  y_recv = jnp.take(y, pos, axis=0, mode="fill", fill_value=0)
  back = jax.lax.all_to_all(y_recv.reshape(P, C, E), axis, 0, 0, tiled=True).reshape(R, E)
  return jnp.take(back, slot, axis=0, mode="fill", fill_value=0)


def _ragged_exchange(rows, counts, ffn, *, P, Xl, C, axis, checked=True):
  """Dispatch/compute/combine with `ragged_all_to_all`: one slice per (peer, expert), written
  straight into the receiver's expert-major, source-minor order, so the received rows are
  already grouped for the matmul. Offsets come from the all-gathered per-expert counts
  G[src, expert]. The receive buffer has the same worst-case size P * C as the padded path,
  but only real rows travel."""
  nK, E = rows.shape
  X = P * Xl
  R = P * C
  a2a = _ragged_impl or jax.lax.ragged_all_to_all
  me = jax.lax.axis_index(axis)
  G = jax.lax.all_gather(counts, axis, axis=0, tiled=False).reshape(P, P, Xl)  # [src, dst, e]
  total = jnp.sum(G, axis=0)  # [dst, e] rows each device receives per local expert
  expert_start = _segment_positions(total)  # [dst, e]
  src_prefix = jnp.cumsum(G, axis=0) - G  # [src, dst, e]
  sorted_start = _segment_positions(G.reshape(P, X))  # [src, X]: where expert x starts in src's rows
  mine = lambda a, axis_: jnp.take(a, me, axis=axis_)  # noqa: E731
  # Forward: my slice (dst, e) lands at expert_start[dst, e] + src_prefix[me, dst, e] on dst.
  out_off = (expert_start + mine(src_prefix, 0)).reshape(X)
  in_off = jnp.cumsum(counts) - counts
  recv_sizes = mine(G, 1).reshape(X)  # index s * Xl + e: rows from s for my expert e
  # The output buffers must carry the operand's varying axes, or the gradients of weights
  # replicated over those axes would not be summed.
  vary = tuple(sorted(col.varying_axes(rows) | set(col.axes_of(axis))))
  buf = col.make_varying(jnp.zeros((R, E), rows.dtype), vary, checked=checked)
  grouped = a2a(rows, buf, in_off, counts, out_off, recv_sizes, axis_name=axis)
  y = ffn(grouped, mine(total, 0))
  # Backward trip: chunk (s, e) of my buffer returns to where expert (me, e) starts in s's rows.
  in_off_b = (mine(expert_start, 0)[None, :] + mine(src_prefix, 1)).reshape(X)
  out_off_b = mine(sorted_start.reshape(P, P, Xl), 1).reshape(X)
  y = col.make_varying(y, vary, checked=checked)
  out = col.make_varying(jnp.zeros((nK, E), y.dtype), tuple(sorted(col.varying_axes(y))), checked=checked)
  return a2a(y, out, in_off_b, recv_sizes, out_off_b, counts, axis_name=axis)


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
  """`lax.ragged_all_to_all` built from all-gathers (P times the memory): a reference for
  testing the ragged exchange's offsets on backends without the real collective."""
  del recv_sizes
  P = jax.lax.axis_size(axis_name)
  me = jax.lax.axis_index(axis_name)
  rows = operand.shape[0]
  spd = input_offsets.shape[0] // P  # slices per peer
  ops = jax.lax.all_gather(operand, axis_name, axis=0, tiled=False)  # [P, rows, ...]
  ins, sends, outs = (jax.lax.all_gather(a, axis_name, axis=0, tiled=False) for a in
                      (input_offsets, send_sizes, output_offsets))  # [P, N]
  idx = me * spd + jnp.arange(spd)
  ins, sends, outs = (jnp.take(a, idx, axis=1)[..., None] for a in (ins, sends, outs))  # [P, spd, 1]
  j = jnp.arange(rows)[None, None, :]
  dest = jnp.where((j >= ins) & (j < ins + sends), outs + j - ins, output.shape[0])
  dest = jnp.min(dest, axis=1).reshape(P * rows)  # each sent row belongs to at most one slice
  return output.at[dest].set(ops.reshape(P * rows, *operand.shape[1:]), mode="drop")


def _local_body(plan_: ExpertPlan, *, act, impl, checked, glu=None):
  P = plan_.ep_size

  def body(x, expert_ids, weights, valid, gate_up, down, gate_up_bias=None):
    n, K = expert_ids.shape
    Xl = gate_up.shape[0]
    X = Xl * P
    flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
    order, counts = _sort_by_expert(flat, X)
    rows = jnp.take(x, order // K, axis=0)

    def ffn(grouped, sizes):
      grouped, w1, w2, b1 = col.match_varying(grouped, gate_up, down, gate_up_bias, checked=checked)
      return _expert_ffn_grouped(grouped, sizes, w1, w2, act, impl, b1, glu)

    axis = col.axis_name(plan_.ep_axes) if plan_.ep_axes else None
    C = n * min(K, Xl)
    if plan_.exchange == "none":
      y_sorted = ffn(rows, counts)
    elif plan_.exchange == "padded":
      y_sorted = _padded_exchange(rows, jnp.take(flat, order), counts, ffn, P=P, Xl=Xl, C=C, axis=axis)
    else:
      y_sorted = _ragged_exchange(rows, counts, ffn, P=P, Xl=Xl, C=C, axis=axis, checked=checked)
    y = jnp.zeros_like(y_sorted).at[order].set(y_sorted, unique_indices=True)
    out = jnp.einsum("nke,nk->ne", y.reshape(n, K, -1), weights.astype(y.dtype))
    if plan_.tp_axes:
      out = jax.lax.psum(out, col.axis_name(plan_.tp_axes))  # partial sums over the split hidden dim
    load = jax.lax.psum(counts, col.axis_name(plan_.token_axes)) if plan_.token_axes else counts
    return out, load

  return body


def dropless_sharded(x, expert_ids, weights, valid, gate_up, down, *, act, impl, plan_: ExpertPlan,
                     gate_up_bias=None, glu=None):
  """Expert-parallel dropless MoE under the ambient mesh (see `plan` and the exchanges)."""
  mesh = col.ambient_mesh()
  tok = col.as_entry(plan_.token_axes)
  ep, tp = col.as_entry(plan_.ep_axes), col.as_entry(plan_.tp_axes)
  checked = col.checks_vma("gmm", impl)
  in_specs = (PartitionSpec(tok, None), PartitionSpec(tok, None), PartitionSpec(tok, None), PartitionSpec(tok),
              PartitionSpec(ep, None, None, tp), PartitionSpec(ep, tp, None))
  args = (x, expert_ids, weights, valid, gate_up, down)
  if gate_up_bias is not None:
    in_specs += (PartitionSpec(ep, None, tp),)
    args += (gate_up_bias,)
  fn = col.shard_map(
      _local_body(plan_, act=act, impl=impl, checked=checked, glu=glu), mesh=mesh, check=checked,
      in_specs=in_specs, out_specs=(PartitionSpec(tok, None), PartitionSpec()))
  out, load = fn(*args)
  return out, load, jnp.zeros((), jnp.int32)


def routed_experts(x, expert_ids, weights, valid, gate_up, down, *, act, mode, capacity_factor, impl,
                   exchange: str | None = None, gate_up_bias=None, down_bias=None, glu: Callable | None = None):
  """x `[N, E]` tokens, expert_ids/weights `[N, K]`, valid `[N]` bool.

  Returns (out `[N, E]`, tokens per expert `[X]` (valid assignments, before any drop),
  dropped assignment count). `exchange` defaults to the one set by `exchange_context` /
  `mesh_context(..., expert_exchange=...)`. Optional `gate_up_bias` `[X, 2, I]`, `down_bias`
  `[X, E]` and gated unit `glu(gate, up)` (default `act(gate) * up`): see the module doc."""
  extra = dict(gate_up_bias=gate_up_bias, glu=glu)
  if mode == "dropless":
    p = plan(x.shape[0], x.shape[1], gate_up.shape, down.shape, current_exchange() if exchange is None else exchange)
    if p is None:
      result = dropless(x, expert_ids, weights, valid, gate_up, down, act=act, impl=impl, **extra)
    else:
      result = dropless_sharded(x, expert_ids, weights, valid, gate_up, down, act=act, impl=impl, plan_=p, **extra)
    if down_bias is None:
      return result
    out, load, dropped = result
    return out + _down_bias_term(expert_ids, weights, valid, down_bias).astype(out.dtype), load, dropped
  if mode == "capacity":
    return capacity(x, expert_ids, weights, valid, gate_up, down, act=act, capacity_factor=capacity_factor,
                    down_bias=down_bias, **extra)
  raise ValueError(f"unknown MoE mode {mode!r}")
