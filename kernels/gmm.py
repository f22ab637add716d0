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
- "mosaic": `gmm_mosaic` (Pallas Mosaic GPU: TMA + WGMMA, persistent, Hopper sm_90 only,
  16-bit inputs; fp32 inputs go to the Triton kernel with one log line).
- "triton": `gmm_pallas` (Pallas Triton backend: any CUDA GPU, fp32 at full precision).
- "pallas": our kernel for this device and JAX: "mosaic" on sm_90 from JAX 0.11, "triton"
  elsewhere (`pallas_backend.gpu_kernel_backend`). Our kernels also run in Pallas' interpreters
  anywhere (`pallas_backend.interpret_mode()` or JAXTRAIN_PALLAS_INTERPRET=1); where they can run
  neither way, the reference runs, with one log line.
- "tokamax": `tokamax.ragged_dot_general` (optional extra; an error if not installed).
- "auto": the row of `auto_table.AUTO` for this platform and device kind ("blocked" on CPU,
  "pallas" on GPU until measured).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain.kernels import dispatch
from jaxtrain.kernels import pallas_backend as pb
from jaxtrain.kernels.gmm_blocked import gmm_blocked, tgmm_blocked
from jaxtrain.kernels.gmm_mosaic import gmm_mosaic, supports, tgmm_mosaic
from jaxtrain.kernels.gmm_pallas import gmm_pallas, tgmm_pallas
from jaxtrain.kernels.tokamax_ops import gmm_tokamax, tgmm_tokamax


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


def _mosaic_or_triton(mosaic_fn, triton_fn, name):
  """Mosaic GPU for 16-bit inputs; fp32 inputs (WGMMA would round them to TF32) go to the
  Triton kernel, which multiplies them at full precision."""

  def fn(lhs, other, group_sizes, **kwargs):
    if supports(lhs.dtype, other.dtype):
      return mosaic_fn(lhs, other, group_sizes, **kwargs)
    dispatch.warn_once(f"{name} impl 'mosaic' takes 16-bit inputs; {jnp.dtype(lhs.dtype).name} runs the Triton kernel")
    return triton_fn(lhs, other, group_sizes, **kwargs)

  fn.supported = pb.can_run_mosaic
  return fn


def _ours(mosaic_fn, triton_fn):
  """"pallas": the kernel family `gpu_kernel_backend` picks for this device and JAX."""

  def fn(lhs, other, group_sizes, **kwargs):
    return (mosaic_fn if pb.gpu_kernel_backend() == "mosaic" else triton_fn)(lhs, other, group_sizes, **kwargs)

  fn.supported = lambda: (pb.can_run_mosaic() if pb.gpu_kernel_backend() == "mosaic" else pb.can_run())
  return fn


_gmm_mosaic = _mosaic_or_triton(gmm_mosaic, gmm_pallas, "gmm")
_tgmm_mosaic = _mosaic_or_triton(tgmm_mosaic, tgmm_pallas, "tgmm")
for op, reference, blocked, triton, mosaic, tokamax in (
    ("gmm", gmm_reference, gmm_blocked, gmm_pallas, _gmm_mosaic, gmm_tokamax),
    ("tgmm", tgmm_reference, tgmm_blocked, tgmm_pallas, _tgmm_mosaic, tgmm_tokamax)):
  dispatch.register(op, "xla", reference, reference=True)
  dispatch.register(op, "blocked", blocked)
  dispatch.register(op, "triton", triton)
  dispatch.register(op, "mosaic", mosaic)
  dispatch.register(op, "pallas", _ours(mosaic, triton))
  dispatch.register(op, "tokamax", tokamax)


def gmm(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None, impl="auto"):
  _, fn = dispatch.resolve("gmm", impl)
  return fn(lhs, rhs, group_sizes, transpose_rhs=transpose_rhs, preferred_element_type=preferred_element_type)


def tgmm(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None, impl="auto"):
  _, fn = dispatch.resolve("tgmm", impl)
  return fn(lhs, grad, group_sizes, num_groups=num_groups, preferred_element_type=preferred_element_type)
