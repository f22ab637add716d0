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
from jaxtrain.kernels.gmm_blocked import gmm_blocked, tgmm_blocked
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
