"""Pallas grouped matmul on the Triton backend (any CUDA GPU; the fallback before Hopper, on
Blackwell and on JAX 0.10; `gmm_mosaic` is the Hopper kernel): `gmm` (expert forward / input
gradient) and `tgmm` (weight gradient), tied together by the custom VJP of `gmm_autodiff`.

Layout and grid. Rows of `lhs` are cut into fixed tiles of `tm` rows (tile i covers rows
[i*tm, (i+1)*tm)); the grid is static: (row tiles, column tiles) for gmm, (groups, k tiles,
n tiles) for tgmm. Which groups a row tile meets is data: small int32 tables computed by XLA
before the call (`group_metadata`) and read inside the kernel with scalar loads, so the grid
never depends on `group_sizes` and the same kernel runs compiled on GPU and under
`interpret=True` on CPU.

- gmm: each program owns one (tm, tn) output tile and loops over the non-empty groups that
  intersect its rows; for each it masks the rows outside the group and accumulates
  lhs_tile @ rhs[group] over k in fp32. Every output tile is written exactly once, so rows past
  `sum(group_sizes)` (met by no group) come out zero, and a tile split by a group boundary
  costs one extra pass per boundary.
- tgmm: each program owns one (tk, tn) tile of one group's weight gradient and loops over the
  row tiles that group covers, masking rows outside it. Empty groups write zeros.

Shapes are padded up to multiples of the tiles (a copy only when they are not already
multiples). On GPU the kernel runs on Pallas' Triton backend, so tiles are powers of two >= 16.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxtrain.kernels import pallas_backend as pb
from jaxtrain.kernels.gmm_autodiff import grouped_matmuls, public_pair

_BIG = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class GmmTiling:
  """Tile sizes (rows, contraction, columns) and Triton launch parameters."""
  tm: int = 128
  tk: int = 64
  tn: int = 128
  num_warps: int = 4
  num_stages: int = 3


def default_gmm_tiling(*, m, k, n, num_groups, dtype, transpose_rhs):
  del num_groups, transpose_rhs
  wide = jnp.dtype(dtype).itemsize >= 4
  return GmmTiling(tm=min(128, pb.next_pow2(m)), tk=min(32 if wide else 64, pb.next_pow2(k)),
                   tn=min(128, pb.next_pow2(n)), num_warps=4, num_stages=3)


def default_tgmm_tiling(*, m, k, n, num_groups, dtype):
  del num_groups
  wide = jnp.dtype(dtype).itemsize >= 4
  return GmmTiling(tm=min(32 if wide else 64, pb.next_pow2(m)), tk=min(128, pb.next_pow2(k)),
                   tn=min(128, pb.next_pow2(n)), num_warps=4, num_stages=3)


def _precision(dtype):
  # fp32 inputs get full-precision dots (Triton would otherwise use TF32); bf16 is exact anyway.
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def _full(shape):
  """BlockSpec of a whole array (read with scalar or dynamic-slice loads in the kernel)."""
  return pl.BlockSpec(tuple(shape), lambda *_: (0,) * len(shape))


def group_bounds(group_sizes, m: int, num_groups: int | None = None):
  """(starts, ends) of each group's rows, clipped to [0, m]; rows >= sum(group_sizes) belong
  to no group."""
  sizes = jnp.maximum(group_sizes.astype(jnp.int32), 0)
  if num_groups is not None and num_groups > sizes.shape[0]:
    sizes = jnp.pad(sizes, (0, num_groups - sizes.shape[0]))
  ends = jnp.minimum(jnp.cumsum(sizes), m).astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  return starts, ends


def group_metadata(group_sizes, m: int, tm: int, num_tiles: int):
  """Tables that map row tiles to groups without a data-dependent grid.

  Returns (ids, starts, ends, tile_lo, tile_hi): the non-empty groups in order (their index
  and row range; unused slots hold a start/end past every row), and for each row tile the
  half-open range [tile_lo, tile_hi) of entries in that list whose rows meet the tile.
  """
  g = group_sizes.shape[0]
  starts, ends = group_bounds(group_sizes, m)
  nonempty = ends > starts
  slot = jnp.where(nonempty, jnp.cumsum(nonempty) - 1, g)  # g = dropped
  ids = jnp.zeros((g,), jnp.int32).at[slot].set(jnp.arange(g, dtype=jnp.int32), mode="drop")
  ne_starts = jnp.full((g,), _BIG, jnp.int32).at[slot].set(starts, mode="drop")
  ne_ends = jnp.full((g,), _BIG, jnp.int32).at[slot].set(ends, mode="drop")
  count = jnp.sum(nonempty.astype(jnp.int32))
  tile_start = jnp.arange(num_tiles, dtype=jnp.int32) * tm
  hi = jnp.minimum(jnp.searchsorted(ne_starts, tile_start + tm, side="left"), count).astype(jnp.int32)
  lo = jnp.minimum(jnp.searchsorted(ne_ends, tile_start, side="right"), hi).astype(jnp.int32)
  return ids, ne_starts, ne_ends, lo, hi


# ----------------------------------------------------------------------------- kernels

def _gmm_kernel(ids_ref, starts_ref, ends_ref, lo_ref, hi_ref, lhs_ref, rhs_ref, out_ref, *,
                tm, tk, tn, num_k, transpose_rhs, precision):
  i = pl.program_id(0)
  j = pl.program_id(1)
  rows = i * tm + jnp.arange(tm, dtype=jnp.int32)[:, None]

  def group_body(e, acc):
    group = ids_ref[e]
    keep = (rows >= starts_ref[e]) & (rows < ends_ref[e])

    def k_body(kk, acc):
      a = lhs_ref[:, pl.ds(kk * tk, tk)]
      a = jnp.where(keep, a, jnp.zeros_like(a))
      if transpose_rhs:
        b = rhs_ref[group, pl.ds(j * tn, tn), pl.ds(kk * tk, tk)]
        dims = (((1,), (1,)), ((), ()))
      else:
        b = rhs_ref[group, pl.ds(kk * tk, tk), pl.ds(j * tn, tn)]
        dims = (((1,), (0,)), ((), ()))
      return acc + lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)

    return lax.fori_loop(0, num_k, k_body, acc)

  acc = lax.fori_loop(lo_ref[i], hi_ref[i], group_body, jnp.zeros((tm, tn), jnp.float32))
  out_ref[...] = acc.astype(out_ref.dtype)


def _tgmm_kernel(starts_ref, ends_ref, lhs_ref, grad_ref, out_ref, *, tm, tk, tn, precision):
  group = pl.program_id(0)
  start = starts_ref[group]
  end = ends_ref[group]
  t_lo = start // tm
  t_hi = jnp.where(end > start, (end + tm - 1) // tm, t_lo)

  def body(t, acc):
    rows = t * tm + jnp.arange(tm, dtype=jnp.int32)[:, None]
    keep = (rows >= start) & (rows < end)
    a = lhs_ref[pl.ds(t * tm, tm), :]
    b = grad_ref[pl.ds(t * tm, tm), :]
    a = jnp.where(keep, a, jnp.zeros_like(a))
    b = jnp.where(keep, b, jnp.zeros_like(b))  # rows outside the group may hold anything
    return acc + lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision,
                                 preferred_element_type=jnp.float32)

  acc = lax.fori_loop(t_lo, t_hi, body, jnp.zeros((tk, tn), jnp.float32))
  out_ref[...] = acc.astype(out_ref.dtype)


# ----------------------------------------------------------------------------- calls

def _pad2(x, rows, cols):
  return jnp.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))


def _gmm_call(lhs, rhs, group_sizes, *, transpose_rhs, out_dtype, tiling, interpret):
  m, k = lhs.shape
  g = rhs.shape[0]
  n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
  dtype = jnp.promote_types(lhs.dtype, rhs.dtype)
  if tiling is None:
    tiling = pb.choose("gmm", default_gmm_tiling, (m, k, n, g, jnp.dtype(dtype).name, transpose_rhs),
                       m=m, k=k, n=n, num_groups=g, dtype=dtype, transpose_rhs=transpose_rhs)
  tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
  mp, kp, np_ = pb.round_up(m, tm), pb.round_up(k, tk), pb.round_up(n, tn)
  lhs_p = _pad2(lhs.astype(dtype), mp, kp)
  rhs = rhs.astype(dtype)
  if transpose_rhs:
    rhs_p = jnp.pad(rhs, ((0, 0), (0, np_ - n), (0, kp - k)))
  else:
    rhs_p = jnp.pad(rhs, ((0, 0), (0, kp - k), (0, np_ - n)))
  num_tiles = mp // tm
  meta = group_metadata(group_sizes, m, tm, num_tiles)
  kernel = functools.partial(_gmm_kernel, tm=tm, tk=tk, tn=tn, num_k=kp // tk, transpose_rhs=transpose_rhs,
                             precision=_precision(dtype))
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(num_tiles, np_ // tn),
      in_specs=[_full((g,))] * 3 + [_full((num_tiles,))] * 2
      + [pl.BlockSpec((tm, kp), lambda i, j: (i, 0)), _full(rhs_p.shape)],
      out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
      name="jaxtrain_gmm",
      **pb.pallas_call_kwargs(tiling.num_warps, tiling.num_stages, interpret=interpret),
  )(*meta, lhs_p, rhs_p)
  return out[:m, :n]


def _tgmm_call(lhs, grad, group_sizes, *, num_groups, out_dtype, tiling, interpret):
  m, k = lhs.shape
  n = grad.shape[1]
  g = group_sizes.shape[0] if num_groups is None else num_groups
  dtype = jnp.promote_types(lhs.dtype, grad.dtype)
  if tiling is None:
    tiling = pb.choose("tgmm", default_tgmm_tiling, (m, k, n, g, jnp.dtype(dtype).name),
                       m=m, k=k, n=n, num_groups=g, dtype=dtype)
  tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
  mp, kp, np_ = pb.round_up(m, tm), pb.round_up(k, tk), pb.round_up(n, tn)
  starts, ends = group_bounds(group_sizes, m, g)
  starts, ends = starts[:g], ends[:g]
  kernel = functools.partial(_tgmm_kernel, tm=tm, tk=tk, tn=tn, precision=_precision(dtype))
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((g, kp, np_), out_dtype),
      grid=(g, kp // tk, np_ // tn),
      in_specs=[_full((g,)), _full((g,)),
                pl.BlockSpec((mp, tk), lambda e, a, b: (0, a)),
                pl.BlockSpec((mp, tn), lambda e, a, b: (0, b))],
      out_specs=pl.BlockSpec((None, tk, tn), lambda e, a, b: (e, a, b)),
      name="jaxtrain_tgmm",
      **pb.pallas_call_kwargs(tiling.num_warps, tiling.num_stages, interpret=interpret),
  )(starts, ends, _pad2(lhs.astype(dtype), mp, kp), _pad2(grad.astype(dtype), mp, np_))
  return out[:, :k, :n]


# ----------------------------------------------------------------------------- autodiff

_gmm, _tgmm = grouped_matmuls(_gmm_call, _tgmm_call)
gmm_pallas, tgmm_pallas = public_pair(_gmm, _tgmm, pb.interpret)
gmm_pallas.__doc__ = "Triton-backend Pallas `gmm` (same contract as `gmm_reference`); `tiling` forces tile sizes."
tgmm_pallas.__doc__ = "Triton-backend Pallas `tgmm` (same contract as `tgmm_reference`); `tiling` forces tile sizes."
gmm_pallas.supported = pb.can_run
tgmm_pallas.supported = pb.can_run
