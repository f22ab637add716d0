"""Grouped matmul for expert dispatch: `gmm(lhs[m,k], rhs[g,k,n], group_sizes[g]) -> [m,n]`.

Rows of `lhs` are grouped contiguously: rows [0, s0) use rhs[0], [s0, s0+s1) use rhs[1], ...
Rows past `sum(group_sizes)` produce zeros. Accumulation is fp32; the output takes the dtype
of `lhs` unless `preferred_element_type` says otherwise. `tgmm` is the weight-gradient form
`tgmm(lhs[m,k], grad[m,n], group_sizes) -> [g,k,n]`.

Implementations:
- "xla": `jax.lax.ragged_dot` (the reference; on XLA:CPU it lowers to a dense masked matmul that
  costs num_groups times the useful FLOPs).
- "blocked": pure JAX; each group's rows are padded to a multiple of `block_rows` and every block
  is multiplied by its group's matrix in one batched matmul. Costs only the active FLOPs plus
  padding, on any backend; the fastest choice on CPU.
- "pallas": `gmm_pallas.gmm_pallas` / `tgmm_pallas` (custom_vjp pair); compiled on GPU (Triton
  backend), interpret mode anywhere (`pallas_backend.interpret_mode()` or
  JAXTRAIN_PALLAS_INTERPRET=1), else the reference with one log line.
- "auto": "blocked" on CPU, "pallas" on GPU (pending measured numbers from
  experiments/bench_kernels.py), the reference elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain.kernels import dispatch
from jaxtrain.kernels.gmm_pallas import gmm_pallas, tgmm_pallas


def _out_dtype(lhs, preferred_element_type):
  return lhs.dtype if preferred_element_type is None else preferred_element_type


def gmm_reference(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None):
  if transpose_rhs:
    rhs = jnp.swapaxes(rhs, 1, 2)
  out = jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32), preferred_element_type=jnp.float32)
  return out.astype(_out_dtype(lhs, preferred_element_type))


def tgmm_reference(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None):
  """Weight gradient of `gmm_reference`: per group g, lhs_g^T @ grad_g."""
  g = group_sizes.shape[0] if num_groups is None else num_groups
  k, n = lhs.shape[1], grad.shape[1]
  zeros = jnp.zeros((g, k, n), lhs.dtype)
  _, vjp = jax.vjp(lambda w: jax.lax.ragged_dot(lhs, w, group_sizes.astype(jnp.int32),
                                                 preferred_element_type=jnp.float32), zeros)
  (out,) = vjp(grad.astype(jnp.float32))
  return out.astype(_out_dtype(lhs, preferred_element_type))


def block_layout(group_sizes, num_rows: int, block_rows: int):
  """Static-shape layout of rows padded per group to a multiple of `block_rows`.

  Returns (row_slot[m], block_group[num_blocks], num_blocks): where each input row lands in the
  padded buffer (rows past sum(group_sizes) point one past the end), and the group of each block.
  num_blocks = ceil(m / block_rows) + num_groups bounds the padded size for any group sizes.
  """
  g = group_sizes.shape[0]
  num_blocks = -(-num_rows // block_rows) + g
  sizes = group_sizes.astype(jnp.int32)
  padded = (sizes + block_rows - 1) // block_rows * block_rows
  starts = jnp.cumsum(sizes) - sizes
  padded_starts = jnp.cumsum(padded) - padded
  rows = jnp.arange(num_rows, dtype=jnp.int32)
  row_group = jnp.searchsorted(jnp.cumsum(sizes), rows, side="right").astype(jnp.int32)
  valid = row_group < g
  safe_group = jnp.minimum(row_group, g - 1)
  row_slot = jnp.where(valid, padded_starts[safe_group] + rows - starts[safe_group], num_blocks * block_rows)
  block_starts = jnp.arange(num_blocks, dtype=jnp.int32) * block_rows
  block_group = jnp.searchsorted(jnp.cumsum(padded), block_starts, side="right").astype(jnp.int32)
  return row_slot, jnp.minimum(block_group, g - 1), num_blocks


def gmm_blocked(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None, block_rows=64):
  m, k = lhs.shape
  if transpose_rhs:
    rhs = jnp.swapaxes(rhs, 1, 2)
  n = rhs.shape[2]
  row_slot, block_group, num_blocks = block_layout(group_sizes, m, block_rows)
  padded = jnp.zeros((num_blocks * block_rows, k), lhs.dtype).at[row_slot].set(lhs, mode="drop")
  blocks = padded.reshape(num_blocks, block_rows, k)
  out = jnp.einsum("bmk,bkn->bmn", blocks, rhs[block_group], preferred_element_type=jnp.float32)
  out = out.reshape(num_blocks * block_rows, n)
  out = jnp.take(out, row_slot, axis=0, mode="fill", fill_value=0)
  return out.astype(_out_dtype(lhs, preferred_element_type))


def tgmm_blocked(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None, block_rows=64):
  m, k = lhs.shape
  n = grad.shape[1]
  g = group_sizes.shape[0] if num_groups is None else num_groups
  row_slot, block_group, num_blocks = block_layout(group_sizes, m, block_rows)

  def pad(x):
    buf = jnp.zeros((num_blocks * block_rows, x.shape[1]), x.dtype).at[row_slot].set(x, mode="drop")
    return buf.reshape(num_blocks, block_rows, x.shape[1])

  per_block = jnp.einsum("bmk,bmn->bkn", pad(lhs), pad(grad), preferred_element_type=jnp.float32)
  out = jax.ops.segment_sum(per_block, block_group, num_segments=g)
  return out.astype(_out_dtype(lhs, preferred_element_type))


dispatch.register("gmm", "xla", gmm_reference, reference=True)
dispatch.register("gmm", "blocked", gmm_blocked)
dispatch.register("tgmm", "xla", tgmm_reference, reference=True)
dispatch.register("tgmm", "blocked", tgmm_blocked)
dispatch.register("gmm", "pallas", gmm_pallas)
dispatch.register("tgmm", "pallas", tgmm_pallas)
dispatch.set_auto("gmm", "cpu", "blocked")
dispatch.set_auto("tgmm", "cpu", "blocked")
dispatch.set_auto("gmm", "gpu", "pallas")
dispatch.set_auto("tgmm", "gpu", "pallas")


def gmm(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None, impl="auto"):
  _, fn = dispatch.resolve("gmm", impl)
  return fn(lhs, rhs, group_sizes, transpose_rhs=transpose_rhs, preferred_element_type=preferred_element_type)


def tgmm(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None, impl="auto"):
  _, fn = dispatch.resolve("tgmm", impl)
  return fn(lhs, grad, group_sizes, num_groups=num_groups, preferred_element_type=preferred_element_type)
