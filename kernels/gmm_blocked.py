"""Grouped matmul in plain JAX for backends without a grouped-matmul kernel (the CPU).

Each group's rows are padded to a multiple of `block_rows`; every block is multiplied by its
group's matrix in one batched matmul, so the cost is the active FLOPs plus padding (never
num_groups times them, as `ragged_dot` costs on XLA:CPU). A custom VJP keeps only the inputs
and the tiny layout tables as residuals: without it, autodiff would store the per-block copies
of the weight matrices for the backward pass.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def block_layout(group_sizes, num_rows: int, block_rows: int):
  """Static-shape layout of rows padded per group to a multiple of `block_rows`.

  Returns (slot_row[num_blocks * block_rows], row_slot[m], block_group[num_blocks]): the source
  row of each padded slot (num_rows = empty), the slot of each row (one past the end for rows
  past sum(group_sizes)), and the group of each block. num_blocks = ceil(m / block_rows) +
  num_groups bounds the padded size for any group sizes.
  """
  g = group_sizes.shape[0]
  num_blocks = -(-num_rows // block_rows) + g
  sizes = group_sizes.astype(jnp.int32)
  ends = jnp.cumsum(sizes)
  padded = (sizes + block_rows - 1) // block_rows * block_rows
  starts, padded_starts = ends - sizes, jnp.cumsum(padded) - padded
  rows = jnp.arange(num_rows, dtype=jnp.int32)
  row_group = jnp.searchsorted(ends, rows, side="right").astype(jnp.int32)
  safe_group = jnp.minimum(row_group, g - 1)
  total = num_blocks * block_rows
  row_slot = jnp.where(row_group < g, padded_starts[safe_group] + rows - starts[safe_group], total)
  slot_row = jnp.full((total,), num_rows, jnp.int32).at[row_slot].set(rows, mode="drop")
  block_starts = jnp.arange(num_blocks, dtype=jnp.int32) * block_rows
  block_group = jnp.searchsorted(jnp.cumsum(padded), block_starts, side="right").astype(jnp.int32)
  return slot_row, row_slot, jnp.minimum(block_group, g - 1)


def _to_blocks(x, slot_row, block_rows):
  padded = jnp.take(x, slot_row, axis=0, mode="fill", fill_value=0)
  return padded.reshape(-1, block_rows, x.shape[1])


def _from_blocks(blocks, row_slot):
  flat = blocks.reshape(-1, blocks.shape[-1])
  return jnp.take(flat, row_slot, axis=0, mode="fill", fill_value=0)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _gmm(lhs, rhs, group_sizes, transpose_rhs, out_dtype, block_rows):
  out, _ = _gmm_fwd(lhs, rhs, group_sizes, transpose_rhs, out_dtype, block_rows)
  return out


def _gmm_fwd(lhs, rhs, group_sizes, transpose_rhs, out_dtype, block_rows):
  slot_row, row_slot, block_group = block_layout(group_sizes, lhs.shape[0], block_rows)
  spec = "bmk,bnk->bmn" if transpose_rhs else "bmk,bkn->bmn"
  blocks = jnp.einsum(spec, _to_blocks(lhs, slot_row, block_rows), rhs[block_group],
                      preferred_element_type=jnp.float32)
  out = _from_blocks(blocks, row_slot).astype(out_dtype)
  return out, (lhs, rhs, group_sizes, slot_row, row_slot, block_group)


def _gmm_bwd(transpose_rhs, out_dtype, block_rows, residuals, grad):
  lhs, rhs, group_sizes, slot_row, row_slot, block_group = residuals
  g_blocks = _to_blocks(grad, slot_row, block_rows)
  lhs_blocks = _to_blocks(lhs, slot_row, block_rows)
  if transpose_rhs:  # rhs [g, n, k]
    d_lhs = jnp.einsum("bmn,bnk->bmk", g_blocks, rhs[block_group], preferred_element_type=jnp.float32)
    per_block = jnp.einsum("bmn,bmk->bnk", g_blocks, lhs_blocks, preferred_element_type=jnp.float32)
  else:  # rhs [g, k, n]
    d_lhs = jnp.einsum("bmn,bkn->bmk", g_blocks, rhs[block_group], preferred_element_type=jnp.float32)
    per_block = jnp.einsum("bmk,bmn->bkn", lhs_blocks, g_blocks, preferred_element_type=jnp.float32)
  d_rhs = jax.ops.segment_sum(per_block, block_group, num_segments=rhs.shape[0])
  return _from_blocks(d_lhs, row_slot).astype(lhs.dtype), d_rhs.astype(rhs.dtype), None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def default_block_rows(num_rows: int, num_groups: int) -> int:
  """About two blocks per group on balanced routing: big enough for efficient batched matmuls
  and for few per-block weight copies, small enough to keep padding moderate (measured on CPU:
  experiments/bench_moe.py)."""
  target = max(num_rows // max(2 * num_groups, 1), 1)
  return int(min(512, max(32, 1 << (target.bit_length() - 1))))


def gmm_blocked(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None, block_rows=None):
  out_dtype = lhs.dtype if preferred_element_type is None else preferred_element_type
  if block_rows is None:
    block_rows = default_block_rows(lhs.shape[0], group_sizes.shape[0])
  return _gmm(lhs, rhs, group_sizes, bool(transpose_rhs), jnp.dtype(out_dtype), int(block_rows))


def tgmm_blocked(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None, block_rows=None):
  """Per group g: lhs_g^T @ grad_g -> [g, k, n]."""
  g = group_sizes.shape[0] if num_groups is None else num_groups
  if block_rows is None:
    block_rows = default_block_rows(lhs.shape[0], group_sizes.shape[0])
  slot_row, _, block_group = block_layout(group_sizes, lhs.shape[0], block_rows)
  per_block = jnp.einsum("bmk,bmn->bkn", _to_blocks(lhs, slot_row, block_rows),
                         _to_blocks(grad, slot_row, block_rows), preferred_element_type=jnp.float32)
  out = jax.ops.segment_sum(per_block, block_group, num_segments=g)
  return out.astype(lhs.dtype if preferred_element_type is None else preferred_element_type)
