"""Expert-parallel dispatchers: the per-device stages inside `shard_map` (see sharded.py) that
send each token copy to the device owning its expert (`peers` devices, `Xl` experts each), run
the expert compute on what arrived, and send the results back.

Both size their receive buffer for the worst case, C = n * min(K, Xl) rows from each peer (n
local tokens, top-k picks distinct experts and a peer owns Xl of them), so nothing is ever
dropped. `PaddedAllToAll` moves the whole padded buffer with `all_to_all` (any backend);
`RaggedAllToAll` moves only real rows with `ragged_all_to_all` (GPU/TPU), or with
`emulated_ragged_all_to_all`, a reference built from all-gathers for backends without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxtrain.parallel import collectives as col
from jaxtrain.parallel.moe.protocol import Dispatched, Prepared, StagedDispatcher, weighted_unsort


def _segment_positions(sizes_2d):
  """For row-major segments `sizes_2d[s, e]`: exclusive prefix over e within each row."""
  return jnp.cumsum(sizes_2d, axis=1) - sizes_2d


def _shape(prepared: Prepared, peers: int):
  """(local experts Xl, worst-case rows per peer C)."""
  n, K = prepared.weights.shape
  Xl = prepared.counts.shape[0] // peers
  return Xl, n * min(K, Xl)


@dataclasses.dataclass(frozen=True)
class PaddedAllToAll(StagedDispatcher):
  """Fixed buffers: each device sends peer d a [C, E] block holding the copies for d's experts
  (zero padded), one `all_to_all` each way. Received rows are scattered into expert-major,
  source-minor order (positions from the exchanged counts, no sort)."""
  axis: Any  # collective axis name of the expert axes
  peers: int

  def dispatch(self, prepared: Prepared) -> Dispatched:
    P, axis, rows, counts = self.peers, self.axis, prepared.rows, prepared.counts
    Xl, C = _shape(prepared, P)
    nK, E = rows.shape
    R = P * C
    sorted_ids = jnp.take(prepared.flat_ids, prepared.order)
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
    return Dispatched(grouped, sizes, state=(pos, slot))

  def combine(self, y, prepared: Prepared, dispatched: Dispatched):
    pos, slot = dispatched.state
    P, (R, E) = self.peers, y.shape
    y_recv = jnp.take(y, pos, axis=0, mode="fill", fill_value=0)
    back = jax.lax.all_to_all(y_recv.reshape(P, R // P, E), self.axis, 0, 0, tiled=True).reshape(R, E)
    return weighted_unsort(jnp.take(back, slot, axis=0, mode="fill", fill_value=0), prepared)


@dataclasses.dataclass(frozen=True)
class RaggedAllToAll(StagedDispatcher):
  """One slice per (peer, expert), written by `a2a` straight into the receiver's expert-major,
  source-minor order, so received rows are already grouped for the matmul. Offsets come from
  the all-gathered per-expert counts G[src, dst, expert]. The receive buffer has the padded
  path's worst-case size P * C, but only real rows travel."""
  axis: Any
  peers: int
  a2a: Callable  # `jax.lax.ragged_all_to_all` or `emulated_ragged_all_to_all`
  checked: bool = True  # the enclosing shard_map checks varying axes

  def dispatch(self, prepared: Prepared) -> Dispatched:
    P, axis, rows, counts = self.peers, self.axis, prepared.rows, prepared.counts
    Xl, C = _shape(prepared, P)
    _, E = rows.shape
    X, R = P * Xl, P * C
    me = jax.lax.axis_index(axis)
    G = jax.lax.all_gather(counts, axis, axis=0, tiled=False).reshape(P, P, Xl)  # [src, dst, e]
    total = jnp.sum(G, axis=0)  # [dst, e] rows each device receives per local expert
    expert_start = _segment_positions(total)  # [dst, e]
    src_prefix = jnp.cumsum(G, axis=0) - G  # [src, dst, e]
    mine = lambda a, axis_: jnp.take(a, me, axis=axis_)
    # Forward: my slice (dst, e) lands at expert_start[dst, e] + src_prefix[me, dst, e] on dst.
    out_off = (expert_start + mine(src_prefix, 0)).reshape(X)
    in_off = jnp.cumsum(counts) - counts
    recv_sizes = mine(G, 1).reshape(X)  # index s * Xl + e: rows from s for my expert e
    # The output buffers must carry the operand's varying axes, or the gradients of weights
    # replicated over those axes would not be summed.
    vary = tuple(sorted(col.varying_axes(rows) | set(col.axes_of(axis))))
    buf = col.make_varying(jnp.zeros((R, E), rows.dtype), vary, checked=self.checked)
    grouped = self.a2a(rows, buf, in_off, counts, out_off, recv_sizes, axis_name=axis)
    state = {"G": G, "me": me, "expert_start": expert_start, "src_prefix": src_prefix, "recv_sizes": recv_sizes,
             "vary": vary}
    return Dispatched(grouped, mine(total, 0), state=state)

  def combine(self, y, prepared: Prepared, dispatched: Dispatched):
    s, P, checked = dispatched.state, self.peers, self.checked
    Xl = prepared.counts.shape[0] // P
    mine = lambda a, axis_: jnp.take(a, s["me"], axis=axis_)
    sorted_start = _segment_positions(s["G"].reshape(P, P * Xl))  # [src, X]: where expert x starts in src's rows
    # Backward trip: chunk (s, e) of my buffer returns to where expert (me, e) starts in s's rows.
    in_off_b = (mine(s["expert_start"], 0)[None, :] + mine(s["src_prefix"], 1)).reshape(P * Xl)
    out_off_b = mine(sorted_start.reshape(P, P, Xl), 1).reshape(P * Xl)
    y = col.make_varying(y, s["vary"], checked=checked)
    out = col.make_varying(jnp.zeros(prepared.rows.shape, y.dtype), tuple(sorted(col.varying_axes(y))),
                           checked=checked)
    back = self.a2a(y, out, in_off_b, s["recv_sizes"], out_off_b, prepared.counts, axis_name=self.axis)
    return weighted_unsort(back, prepared)


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
  """`lax.ragged_all_to_all` built from all-gathers (P times the memory): a reference for
  checking the ragged exchange's offsets on backends without the real collective."""
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
