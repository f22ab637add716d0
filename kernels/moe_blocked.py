"""A whole dropless expert FFN (dispatch -> gate/up -> gated unit -> down -> combine) in plain
JAX, laid out in row blocks padded per expert: the CPU path behind `kernels.gmm="blocked"`.

Compared with sort -> `gmm` -> `gmm` -> un-sort, token copies go straight from the tokens to
their padded slot and back, and a custom VJP expresses every data movement of the backward pass
as a gather (slot <-> assignment is a bijection), so no scatter-add appears anywhere; residuals
are the inputs, the pre-activations and the outputs (no per-block weight copies).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxtrain.kernels.gmm_blocked import default_block_rows


def _layout(expert_ids, valid, num_experts: int, block_rows: int):
  """Slots of the padded buffer: slot of each assignment `[N*K]` (num_slots when invalid), the
  token and the assignment of each slot `[num_slots]` (N / N*K when empty), the expert of each
  block, and tokens per expert."""
  N, K = expert_ids.shape
  X = num_experts
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1).astype(jnp.int32)
  counts = jnp.zeros((X,), jnp.int32).at[flat].add(1, mode="drop")
  padded = (counts + block_rows - 1) // block_rows * block_rows
  num_blocks = -(-N * K // block_rows) + X
  num_slots = num_blocks * block_rows
  order = jnp.argsort(flat, stable=True)
  starts = jnp.cumsum(counts) - counts
  sorted_ids = flat[order]
  rank_sorted = jnp.arange(N * K, dtype=jnp.int32) - jnp.take(starts, jnp.minimum(sorted_ids, X - 1))
  padded_starts = jnp.cumsum(padded) - padded
  slot_sorted = jnp.where(sorted_ids < X, jnp.take(padded_starts, jnp.minimum(sorted_ids, X - 1)) + rank_sorted,
                          num_slots)
  slot = jnp.zeros((N * K,), jnp.int32).at[order].set(slot_sorted, unique_indices=True)
  assignment = jnp.full((num_slots,), N * K, jnp.int32).at[slot].set(jnp.arange(N * K, dtype=jnp.int32),
                                                                      mode="drop")
  token = jnp.where(assignment < N * K, assignment // K, N)
  block_starts = jnp.arange(num_blocks, dtype=jnp.int32) * block_rows
  block_expert = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded), block_starts, side="right"), X - 1)
  return slot, token, assignment, block_expert.astype(jnp.int32), counts


def _rows(x, index):
  """x[index] with index == len(x) meaning a zero row."""
  return jnp.take(jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)]), index, axis=0)


def _blocks(x, block_rows):
  return x.reshape(-1, block_rows, *x.shape[1:])


@partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _ffn(x, weights, gate_up, down, gate_up_bias, layout_ints, block_expert, glu, block_rows):
  return _ffn_fwd(x, weights, gate_up, down, gate_up_bias, layout_ints, block_expert, glu, block_rows)[0]


def _forward(x, gate_up, down, gate_up_bias, token, block_expert, glu, block_rows):
  X, E, _, I = gate_up.shape
  xb = _blocks(_rows(x, token), block_rows)  # [nb, B, E]
  h = jnp.einsum("bme,bef->bmf", xb, gate_up.reshape(X, E, 2 * I)[block_expert],
                 preferred_element_type=jnp.float32).astype(x.dtype)
  h = h.reshape(*h.shape[:2], 2, I)
  if gate_up_bias is not None:
    h = h + gate_up_bias[block_expert][:, None].astype(h.dtype)
  a = glu(h[..., 0, :], h[..., 1, :])
  y = jnp.einsum("bmi,bie->bme", a, down[block_expert], preferred_element_type=jnp.float32).astype(x.dtype)
  return xb, h, a, y


def _ffn_fwd(x, weights, gate_up, down, gate_up_bias, layout_ints, block_expert, glu, block_rows):
  slot, token, _ = layout_ints
  N, K = weights.shape
  xb, h, _, y = _forward(x, gate_up, down, gate_up_bias, token, block_expert, glu, block_rows)
  y_flat = y.reshape(-1, y.shape[-1])
  picked = _rows(y_flat, slot).reshape(N, K, -1)  # [N, K, E]
  out = jnp.einsum("nke,nk->ne", picked, weights.astype(picked.dtype))
  return out, (x, weights, gate_up, down, gate_up_bias, layout_ints, block_expert, h, y_flat)


def _ffn_bwd(glu, block_rows, residuals, dout):
  x, weights, gate_up, down, gate_up_bias, (slot, token, assignment), block_expert, h, y_flat = residuals
  N, K = weights.shape
  X, E, _, I = gate_up.shape
  # Combine: out[n] = sum_k w[n, k] y[slot[n, k]].
  picked = _rows(y_flat, slot).reshape(N, K, E)
  d_weights = jnp.einsum("nke,ne->nk", picked, dout.astype(picked.dtype)).astype(weights.dtype)
  slot_weight = _rows(weights.reshape(-1, 1), assignment)[:, 0]  # [slots]
  dy = _blocks(_rows(dout, token) * slot_weight[:, None].astype(dout.dtype), block_rows)  # [nb, B, E]
  # Down projection and gated unit.
  gate, up = h[..., 0, :], h[..., 1, :]
  a, glu_vjp = jax.vjp(glu, gate, up)
  da = jnp.einsum("bme,bie->bmi", dy, down[block_expert], preferred_element_type=jnp.float32).astype(a.dtype)
  d_down = jax.ops.segment_sum(jnp.einsum("bmi,bme->bie", a, dy, preferred_element_type=jnp.float32),
                               block_expert, num_segments=X)
  d_gate, d_up = glu_vjp(da)
  dh = jnp.stack([d_gate, d_up], axis=-2)  # [nb, B, 2, I]
  d_bias = None
  if gate_up_bias is not None:
    d_bias = jax.ops.segment_sum(jnp.sum(dh, axis=1, dtype=jnp.float32), block_expert,
                                 num_segments=X).astype(gate_up_bias.dtype)
  # Gate/up projection.
  dh = dh.reshape(*dh.shape[:2], 2 * I)
  xb = _blocks(_rows(x, token), block_rows)
  dxb = jnp.einsum("bmf,bef->bme", dh, gate_up.reshape(X, E, 2 * I)[block_expert],
                   preferred_element_type=jnp.float32).astype(x.dtype)
  d_gate_up = jax.ops.segment_sum(jnp.einsum("bme,bmf->bef", xb, dh, preferred_element_type=jnp.float32),
                                  block_expert, num_segments=X).reshape(X, E, 2, I)
  # Dispatch: x[n] went to slots slot[n, :].
  dx = jnp.sum(_rows(dxb.reshape(-1, E), slot).reshape(N, K, E), axis=1, dtype=jnp.float32).astype(x.dtype)
  return (dx, d_weights, d_gate_up.astype(gate_up.dtype), d_down.astype(down.dtype), d_bias, None, None)


_ffn.defvjp(_ffn_fwd, _ffn_bwd)


def blocked_expert_ffn(x, expert_ids, weights, valid, gate_up, down, *, glu, gate_up_bias=None, block_rows=None):
  """x `[N, E]`, expert_ids / weights `[N, K]`, valid `[N]`; gate_up `[X, E, 2, I]`,
  down `[X, I, E]`, gate_up_bias `[X, 2, I]` or None; glu(gate, up) -> hidden.

  Returns (out `[N, E]` = sum_k weights * expert_k(x), tokens per expert `[X]`)."""
  N, K = expert_ids.shape
  X = gate_up.shape[0]
  block_rows = default_block_rows(N * K, X) if block_rows is None else int(block_rows)
  slot, token, assignment, block_expert, counts = _layout(expert_ids, valid, X, block_rows)
  out = _ffn(x, weights, gate_up, down, gate_up_bias, (slot, token, assignment), block_expert, glu, block_rows)
  return out, counts
