"""A whole dropless expert FFN (dispatch -> gate/up -> gated unit -> down -> combine) in plain
JAX, laid out in row blocks padded per expert: the CPU path behind `kernels.gmm="blocked"`.

Compared with sort -> `gmm` -> `gmm` -> un-sort, token copies go straight from the tokens to
their padded slot and back, and a custom VJP expresses every data movement of the backward pass
as a gather (slot <-> assignment is a bijection), so no scatter-add appears anywhere; residuals
are the inputs, the pre-activations and the outputs (no per-block weight copies).

Per-expert LoRA adapters (`lora` = (gate_up_a, gate_up_b, down_a, down_b), as
`parallel.moe.protocol.ExpertLoRA`) are computed in the same blocks: each block's rows go
through its expert's A then B (rank r), so a LoRA run keeps the fused path; the backward pass
recomputes the rank-r intermediates instead of saving them.
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


def _mm(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(a.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _ffn(x, weights, gate_up, down, gate_up_bias, lora, layout_ints, block_expert, glu, block_rows, lora_scale):
  return _ffn_fwd(x, weights, gate_up, down, gate_up_bias, lora, layout_ints, block_expert, glu, block_rows,
                  lora_scale)[0]


def _forward(x, gate_up, down, gate_up_bias, lora, token, block_expert, glu, block_rows, lora_scale):
  X, E, _, I = gate_up.shape
  xb = _blocks(_rows(x, token), block_rows)  # [nb, B, E]
  h = _mm("bme,bef->bmf", xb, gate_up.reshape(X, E, 2 * I)[block_expert])
  if lora is not None:
    gu_a, gu_b = lora[0][block_expert], lora[1].reshape(X, -1, 2 * I)[block_expert]
    h = h + lora_scale * _mm("bmr,brf->bmf", _mm("bme,ber->bmr", xb, gu_a), gu_b)
  h = h.reshape(*h.shape[:2], 2, I)
  if gate_up_bias is not None:
    h = h + gate_up_bias[block_expert][:, None].astype(h.dtype)
  a = glu(h[..., 0, :], h[..., 1, :])
  y = _mm("bmi,bie->bme", a, down[block_expert])
  if lora is not None:
    y = y + lora_scale * _mm("bmr,bre->bme", _mm("bmi,bir->bmr", a, lora[2][block_expert]), lora[3][block_expert])
  return xb, h, a, y


def _ffn_fwd(x, weights, gate_up, down, gate_up_bias, lora, layout_ints, block_expert, glu, block_rows, lora_scale):
  slot, token, _ = layout_ints
  N, K = weights.shape
  xb, h, _, y = _forward(x, gate_up, down, gate_up_bias, lora, token, block_expert, glu, block_rows, lora_scale)
  y_flat = y.reshape(-1, y.shape[-1])
  picked = _rows(y_flat, slot).reshape(N, K, -1)  # [N, K, E]
  out = jnp.einsum("nke,nk->ne", picked, weights.astype(picked.dtype))
  return out, (x, weights, gate_up, down, gate_up_bias, lora, layout_ints, block_expert, h, y_flat)


def _adapter_bwd(inp, d_out, a, b, block_expert, num_experts: int, scale: float):
  """y += scale * (inp @ a[e]) @ b[e] per block: (d inp, d a, d b)."""
  a_b, b_b = a[block_expert], b[block_expert]
  u = _mm("bmk,bkr->bmr", inp, a_b)
  d_b = jax.ops.segment_sum(scale * jnp.einsum("bmr,bmn->brn", u, d_out, preferred_element_type=jnp.float32),
                            block_expert, num_segments=num_experts)
  du = scale * _mm("bmn,brn->bmr", d_out, b_b)
  d_a = jax.ops.segment_sum(jnp.einsum("bmk,bmr->bkr", inp, du, preferred_element_type=jnp.float32),
                            block_expert, num_segments=num_experts)
  return _mm("bmr,bkr->bmk", du, a_b), d_a.astype(a.dtype), d_b.astype(b.dtype)


def _ffn_bwd(glu, block_rows, lora_scale, residuals, dout):
  x, weights, gate_up, down, gate_up_bias, lora, (slot, token, assignment), block_expert, h, y_flat = residuals
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
  if lora is not None:
    da_lora, d_dn_a, d_dn_b = _adapter_bwd(a, dy, lora[2], lora[3], block_expert, X, lora_scale)
    da = da + da_lora
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
  d_lora = None
  if lora is not None:
    dxb_lora, d_gu_a, d_gu_b = _adapter_bwd(xb, dh, lora[0], lora[1].reshape(X, -1, 2 * I), block_expert, X,
                                            lora_scale)
    dxb = dxb + dxb_lora
    d_lora = (d_gu_a, d_gu_b.reshape(lora[1].shape), d_dn_a, d_dn_b)
  # Dispatch: x[n] went to slots slot[n, :].
  dx = jnp.sum(_rows(dxb.reshape(-1, E), slot).reshape(N, K, E), axis=1, dtype=jnp.float32).astype(x.dtype)
  return (dx, d_weights, d_gate_up.astype(gate_up.dtype), d_down.astype(down.dtype), d_bias, d_lora, None, None)


_ffn.defvjp(_ffn_fwd, _ffn_bwd)


def blocked_expert_ffn(x, expert_ids, weights, valid, gate_up, down, *, glu, gate_up_bias=None, block_rows=None,
                       lora=None, lora_scale: float = 1.0):
  """x `[N, E]`, expert_ids / weights `[N, K]`, valid `[N]`; gate_up `[X, E, 2, I]`,
  down `[X, I, E]`, gate_up_bias `[X, 2, I]` or None; glu(gate, up) -> hidden; lora None or
  (gate_up_a `[X, E, r]`, gate_up_b `[X, r, 2, I]`, down_a `[X, I, r]`, down_b `[X, r, E]`)
  adding lora_scale * x @ a @ b to each projection.

  Returns (out `[N, E]` = sum_k weights * expert_k(x), tokens per expert `[X]`)."""
  N, K = expert_ids.shape
  X = gate_up.shape[0]
  block_rows = default_block_rows(N * K, X) if block_rows is None else int(block_rows)
  slot, token, assignment, block_expert, counts = _layout(expert_ids, valid, X, block_rows)
  lora = None if lora is None else tuple(lora)
  out = _ffn(x, weights, gate_up, down, gate_up_bias, lora, (slot, token, assignment), block_expert, glu, block_rows,
             float(lora_scale))
  return out, counts
