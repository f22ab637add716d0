"""The custom VJP shared by every grouped-matmul kernel pair.

A backend supplies two raw calls with these contracts (no autodiff of their own):

- `gmm_call(lhs[m,k], rhs, group_sizes, *, transpose_rhs, out_dtype, tiling, interpret) -> [m,n]`
  with rhs `[g,k,n]` (or `[g,n,k]` when `transpose_rhs`), rows past sum(group_sizes) zero;
- `tgmm_call(lhs[m,k], grad[m,n], group_sizes, *, num_groups, out_dtype, tiling, interpret)
  -> [g,k,n]`, per group lhs_g^T @ grad_g, empty groups zero.

`grouped_matmuls(gmm_call, tgmm_call)` ties them into differentiable `gmm` / `tgmm`: the input
gradient of gmm is a gmm with the other rhs layout, the weight gradient a tgmm (the
ragged-contracting layout), and the gradients of tgmm are two gmms. The backward calls use the
kernels' default tilings and run the way the forward was traced (compiled or interpreted).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CallConfig:
  """Static choices of one call: output dtype, forced tiling (None = the kernel's default) and
  interpret mode (whatever the backend's kernel understands, captured at trace time)."""
  out_dtype: Any
  tiling: Any
  interpret: Any


def grouped_matmuls(gmm_call: Callable, tgmm_call: Callable) -> tuple[Callable, Callable]:
  """Returns `(gmm(lhs, rhs, group_sizes, transpose_rhs, cfg), tgmm(lhs, grad, group_sizes,
  num_groups, cfg))`, differentiable in their array arguments (`cfg`: a `CallConfig`)."""

  def raw_gmm(lhs, rhs, group_sizes, transpose_rhs, out_dtype, tiling, interpret):
    return gmm_call(lhs, rhs, group_sizes, transpose_rhs=transpose_rhs, out_dtype=out_dtype, tiling=tiling,
                    interpret=interpret)

  def raw_tgmm(lhs, grad, group_sizes, num_groups, out_dtype, tiling, interpret):
    return tgmm_call(lhs, grad, group_sizes, num_groups=num_groups, out_dtype=out_dtype, tiling=tiling,
                     interpret=interpret)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def gmm(lhs, rhs, group_sizes, transpose_rhs, cfg):
    return raw_gmm(lhs, rhs, group_sizes, transpose_rhs, cfg.out_dtype, cfg.tiling, cfg.interpret)

  def gmm_fwd(lhs, rhs, group_sizes, transpose_rhs, cfg):
    return gmm(lhs, rhs, group_sizes, transpose_rhs, cfg), (lhs, rhs, group_sizes)

  def gmm_bwd(transpose_rhs, cfg, res, grad):
    lhs, rhs, group_sizes = res
    d_lhs = raw_gmm(grad, rhs, group_sizes, not transpose_rhs, lhs.dtype, None, cfg.interpret)
    if transpose_rhs:  # rhs[g] is [n, k]: d rhs[g] = grad_g^T lhs_g
      d_rhs = raw_tgmm(grad, lhs, group_sizes, rhs.shape[0], rhs.dtype, None, cfg.interpret)
    else:
      d_rhs = raw_tgmm(lhs, grad, group_sizes, rhs.shape[0], rhs.dtype, None, cfg.interpret)
    return d_lhs, d_rhs, None

  gmm.defvjp(gmm_fwd, gmm_bwd)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
  def tgmm(lhs, grad, group_sizes, num_groups, cfg):
    return raw_tgmm(lhs, grad, group_sizes, num_groups, cfg.out_dtype, cfg.tiling, cfg.interpret)

  def tgmm_fwd(lhs, grad, group_sizes, num_groups, cfg):
    return tgmm(lhs, grad, group_sizes, num_groups, cfg), (lhs, grad, group_sizes)

  def tgmm_bwd(num_groups, cfg, res, cot):
    lhs, grad, group_sizes = res  # out[g] = lhs_g^T grad_g, cot[g] is [k, n]
    d_lhs = raw_gmm(grad, cot, group_sizes, True, lhs.dtype, None, cfg.interpret)
    d_grad = raw_gmm(lhs, cot, group_sizes, False, grad.dtype, None, cfg.interpret)
    return d_lhs, d_grad, None

  tgmm.defvjp(tgmm_fwd, tgmm_bwd)
  return gmm, tgmm


def public_pair(gmm, tgmm, interpret: Callable[[], Any]) -> tuple[Callable, Callable]:
  """The `gmm_reference` / `tgmm_reference` signatures over a `grouped_matmuls` pair;
  `interpret()` reads the backend's interpret setting when a call is traced."""

  def gmm_fn(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None, tiling=None):
    out_dtype = jnp.dtype(lhs.dtype if preferred_element_type is None else preferred_element_type)
    return gmm(lhs, rhs, group_sizes.astype(jnp.int32), bool(transpose_rhs), CallConfig(out_dtype, tiling, interpret()))

  def tgmm_fn(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None, tiling=None):
    out_dtype = jnp.dtype(lhs.dtype if preferred_element_type is None else preferred_element_type)
    g = group_sizes.shape[0] if num_groups is None else int(num_groups)
    return tgmm(lhs, grad, group_sizes.astype(jnp.int32), g, CallConfig(out_dtype, tiling, interpret()))

  return gmm_fn, tgmm_fn
