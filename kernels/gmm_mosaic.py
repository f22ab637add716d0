"""Grouped matmul for Hopper in Pallas Mosaic GPU: `gmm` (expert forward and input gradient,
either rhs layout) and `tgmm` (weight gradient: the ragged dimension is contracted), tied
together by the custom VJP of `gmm_autodiff`. bf16/fp16 in, fp32 accumulation, group sizes known
only at run time.

Both kernels are persistent: one program per SM (`plgpu.kernel` over a grid named "sm") walks a
static list of work items with `plgpu.nd_loop`. What an item covers is data, small int32 tables
XLA computes before the call, so nothing is traced per group layout.

- gmm: an item is one (piece, row tile) pair, times the column tiles, where a piece is a group or
  the padding rows past sum(group_sizes). Row tiles are fixed (`block_m` rows each); a tile met by
  several pieces is visited once per piece, so there are at most ceil(m / block_m) + g items per
  column tile. The K loop is a TMA pipeline (`plgpu.emit_pipeline`) feeding `wgmma` into an fp32
  register accumulator; a padding piece skips it and stores zeros. TMA boxes have static sizes,
  so the item's rows (a dynamic count) leave shared memory as one copy per set bit of the count
  (row counts 2^j, largest first): every row is written exactly once, by the piece it belongs to.
- tgmm: an item is one (group, k tile, n tile) block of the output. The pipeline runs over the
  group's row blocks (a dynamic trip count, zero for an empty group, whose block is stored as
  zeros); in the first and last block, rows of neighbouring groups are zeroed in shared memory
  before the `wgmma` with a select, so nothing from outside the group (not even a NaN) leaks in.
  `lhs` enters `wgmma` transposed (`transpose_ref`), which Hopper reads for 16-bit types.

Shapes: k and n are padded to multiples of the tiles (a copy only when they are not already
multiples); m is not (TMA zero-fills loads past the last row and no store goes past it). Tiles:
`block_k` * 2 bytes (and the output row) must be a multiple of 128 bytes for the swizzled
layouts, so 64 for bf16. Compiled only on sm_90; runs in Pallas' GPU interpreter anywhere
(`pallas_backend.interpret_mode()`), which is how the CPU tests run it.
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
from jaxtrain.kernels.gmm_pallas import group_bounds

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class MosaicGmmTiling:
  """Tiles and pipeline depth. gmm: output tile (block_m, block_n), contraction step block_k.
  tgmm: output tile (block_k_out, block_n) per group, contraction step block_k rows.
  `num_sms`: programs to launch (None = the device's SM count)."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  block_k_out: int = 128
  max_concurrent_steps: int = 4
  num_sms: int | None = None


def default_tiling(*, m, k, n, num_groups, dtype, transpose_rhs=False):
  """128x128 fp32 accumulators (one warpgroup, 128 registers per thread), 64-wide bf16
  contraction steps (128-byte swizzle), 4 stages: 128 KiB of operand tiles plus the output tile
  (32-64 KiB) of the 227 KiB of shared memory (the lowering checks the budget)."""
  del m, k, n, num_groups, dtype, transpose_rhs
  return MosaicGmmTiling()


def supports(lhs_dtype, rhs_dtype) -> bool:
  """WGMMA takes 16-bit floats from shared memory; fp32 would silently become TF32. (Inside the
  backward pass an fp32 cotangent meets 16-bit weights: see `_compute_dtype`.)"""
  return jnp.dtype(lhs_dtype) in DTYPES and jnp.dtype(rhs_dtype) in DTYPES


def _compute_dtype(a, b):
  """The 16-bit dtype both operands are multiplied in: an fp32 operand (in the backward pass, the
  cotangent of an fp32 output) is rounded to its partner's 16-bit type, as mixed-precision
  training does; WGMMA would otherwise read fp32 as TF32, with twice the shared memory."""
  for dtype in (jnp.dtype(a.dtype), jnp.dtype(b.dtype)):
    if dtype in DTYPES:
      return dtype
  raise TypeError(f"Mosaic GPU grouped matmul needs a 16-bit operand, got {a.dtype} and {b.dtype}")


def _swizzled(shape, dtype):
  """Shared-memory transforms for a WGMMA operand tile whose minor dimension is shape[-1]."""
  plgpu = pb.mosaic_gpu_module()
  swizzle = plgpu.find_swizzle(shape[-1] * jnp.dtype(dtype).itemsize * 8, "grouped matmul tile")
  return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(swizzle))


def _mma(acc_ref, a_ref, b_ref, *, a_transposed=False, b_transposed=False, interpret=False):
  """acc += op(a) @ op(b) with `wgmma`; a transposed operand is a transposed view of the tile
  (`transpose_ref`, which WGMMA reads natively for 16-bit types). The GPU interpreter reads
  operands as stored, so there the view is materialised in a scratch tile first."""
  plgpu = pb.mosaic_gpu_module()
  if not interpret:
    a = plgpu.transpose_ref(a_ref, (1, 0)) if a_transposed else a_ref
    b = plgpu.transpose_ref(b_ref, (1, 0)) if b_transposed else b_ref
    plgpu.wgmma(acc_ref, a, b)
    return

  def with_operand(ref, transposed, use):
    if not transposed:
      return use(ref)

    def scoped(tile):
      tile[...] = ref[...].T
      plgpu.commit_smem()
      use(tile)

    pl.run_scoped(scoped, plgpu.SMEM(ref.shape[::-1], ref.dtype))

  with_operand(a_ref, a_transposed,
               lambda a: with_operand(b_ref, b_transposed, lambda b: plgpu.wgmma(acc_ref, a, b)))


# ----------------------------------------------------------------------------- gmm

def work_items(group_sizes, m: int, block_m: int):
  """(piece, row tile, first row within the tile, row count) of every gmm work item.

  Pieces are the g groups and, as piece g, the padding rows [sum(group_sizes), m); items are
  ordered by piece, so consecutive items share a weight matrix. The static count
  ceil(m / block_m) + g bounds the visits for any group sizes; unused items have count 0."""
  g = group_sizes.shape[0]
  starts, ends = group_bounds(group_sizes, m)
  starts = jnp.concatenate([starts, ends[-1:]])
  ends = jnp.concatenate([ends, jnp.full((1,), m, jnp.int32)])
  visits = jnp.where(ends > starts, (ends - 1) // block_m - starts // block_m + 1, 0)
  last = jnp.cumsum(visits)
  num_items = pl.cdiv(m, block_m) + g
  item = jnp.arange(num_items, dtype=jnp.int32)
  piece = jnp.searchsorted(last, item, side="right").astype(jnp.int32)
  used = piece <= g
  piece = jnp.minimum(piece, g)
  tile = starts[piece] // block_m + item - (last[piece] - visits[piece])
  lo = jnp.maximum(starts[piece], tile * block_m) - tile * block_m
  hi = jnp.minimum(ends[piece], (tile + 1) * block_m) - tile * block_m
  count = jnp.where(used, hi - lo, 0).astype(jnp.int32)
  return piece, tile.astype(jnp.int32), lo.astype(jnp.int32), count


def _store_rows(acc, out_gmem, *, row0, lo, count, col, block_m, block_n, max_rows):
  """Writes rows [lo, lo + count) of the (block_m, block_n) tile `acc` to out rows row0 + lo...
  as one TMA copy per set bit of `count` (0 < count <= max_rows)."""
  plgpu = pb.mosaic_gpu_module()

  @functools.partial(pl.run_scoped, o_smem=plgpu.SMEM((block_m, block_n), out_gmem.dtype))
  def _(o_smem):
    o_smem[...] = acc.astype(o_smem.dtype)
    plgpu.commit_smem()
    offset = lo
    rows = 1 << (max_rows.bit_length() - 1)  # the largest power of two <= max_rows
    while rows:
      @pl.when((count & rows) != 0)
      def _(offset=offset, rows=rows):
        plgpu.copy_smem_to_gmem(o_smem.at[pl.ds(offset, rows)],
                                out_gmem.at[pl.ds(row0 + offset, rows), pl.ds(col, block_n)])

      offset = offset + (count & rows)
      rows //= 2
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _gmm_body(piece_ref, tile_ref, lo_ref, count_ref, lhs_gmem, rhs_gmem, out_gmem, *, num_groups, transpose_rhs,
              tiling, num_k, interpret):
  plgpu = pb.mosaic_gpu_module()
  bm, bn, bk = tiling.block_m, tiling.block_n, tiling.block_k
  m = lhs_gmem.shape[0]
  grid_n = out_gmem.shape[1] // bn
  rhs_block = (bn, bk) if transpose_rhs else (bk, bn)

  @plgpu.nd_loop((piece_ref.shape[0] * grid_n,), collective_axes="sm")
  def _item(info):
    w, ni = lax.div(info.index[0], grid_n), lax.rem(info.index[0], grid_n)
    count = count_ref[w]

    @pl.when(count > 0)
    def _():
      piece, tile = piece_ref[w], tile_ref[w]

      def step(_, lhs_smem, rhs_smem, acc_ref):
        _mma(acc_ref, lhs_smem, rhs_smem, b_transposed=transpose_rhs, interpret=interpret)

      def accumulate(acc_ref):
        @pl.when(piece < num_groups)  # piece num_groups: padding rows, stored as zeros
        def _():
          plgpu.emit_pipeline(
              lambda idx, a, b: step(idx, a, b, acc_ref),
              grid=(num_k,),
              in_specs=[
                  plgpu.BlockSpec((bm, bk), lambda kk: (tile, kk), transforms=_swizzled((bm, bk), lhs_gmem.dtype),
                                  delay_release=1),
                  plgpu.BlockSpec(rhs_block, (lambda kk: (ni, kk)) if transpose_rhs else (lambda kk: (kk, ni)),
                                  transforms=_swizzled(rhs_block, rhs_gmem.dtype), delay_release=1),
              ],
              max_concurrent_steps=tiling.max_concurrent_steps,
          )(lhs_gmem, rhs_gmem.at[jnp.minimum(piece, num_groups - 1)])

        return acc_ref[...]

      acc = pl.run_scoped(accumulate, plgpu.ACC((bm, bn), jnp.float32))
      _store_rows(acc, out_gmem, row0=tile * bm, lo=lo_ref[w], count=count, col=ni * bn, block_m=bm, block_n=bn,
                  max_rows=min(bm, m))


def _pad_to(x, multiples):
  pads = [(0, -(-d // t) * t - d) for d, t in zip(x.shape, multiples)]
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


def _gmm_call(lhs, rhs, group_sizes, *, transpose_rhs, out_dtype, tiling, interpret):
  plgpu = pb.mosaic_gpu_module()
  m, k = lhs.shape
  g = rhs.shape[0]
  n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
  dtype = _compute_dtype(lhs, rhs)
  if tiling is None:
    tiling = pb.choose("gmm_mosaic", default_tiling, (m, k, n, g, jnp.dtype(dtype).name, transpose_rhs),
                       m=m, k=k, n=n, num_groups=g, dtype=dtype, transpose_rhs=transpose_rhs)
  bm, bn, bk = tiling.block_m, tiling.block_n, tiling.block_k
  lhs_p = _pad_to(lhs.astype(dtype), (1, bk))
  rhs_p = _pad_to(rhs.astype(dtype), (1, bn, bk) if transpose_rhs else (1, bk, bn))
  np_ = rhs_p.shape[1] if transpose_rhs else rhs_p.shape[2]
  tables = work_items(group_sizes, m, bm)
  body = functools.partial(_gmm_body, num_groups=g, transpose_rhs=transpose_rhs, tiling=tiling,
                           num_k=lhs_p.shape[1] // bk, interpret=bool(interpret))
  out = plgpu.kernel(body, out_type=jax.ShapeDtypeStruct((m, np_), out_dtype), grid=(tiling.num_sms or pb.num_sms(),),
                     grid_names=("sm",), kernel_name="jaxtrain_gmm_mosaic",
                     **pb.mosaic_kernel_kwargs(interpret=interpret))(*tables, lhs_p, rhs_p)
  return out if np_ == n else out[:, :n]


# ----------------------------------------------------------------------------- tgmm

def group_blocks(group_sizes, m: int, block_m: int, num_groups: int):
  """(first row block, row blocks, first row, end row) of each group; empty groups have 0 blocks."""
  starts, ends = group_bounds(group_sizes, m, num_groups)
  starts, ends = starts[:num_groups], ends[:num_groups]
  first = starts // block_m
  blocks = jnp.where(ends > starts, (ends + block_m - 1) // block_m - first, 0)
  return first.astype(jnp.int32), blocks.astype(jnp.int32), starts, ends


def _row_iota(shape, interpret):
  """Row index of every element of a (rows, cols) register tile in the WGMMA layout (a layout
  hint: the GPU interpreter has no layouts and takes the plain iota)."""
  plgpu = pb.mosaic_gpu_module()
  iota = lax.broadcasted_iota(jnp.int32, shape, 0)
  return iota if interpret else plgpu.layout_cast(iota, plgpu.Layout.WGMMA)


def _tgmm_body(first_ref, blocks_ref, start_ref, end_ref, lhs_gmem, grad_gmem, out_gmem, *, tiling, interpret):
  plgpu = pb.mosaic_gpu_module()
  bt, bk, bn = tiling.block_k, tiling.block_k_out, tiling.block_n
  g = out_gmem.shape[0]
  grid_k, grid_n = out_gmem.shape[1] // bk, out_gmem.shape[2] // bn

  @plgpu.nd_loop((g * grid_k * grid_n,), collective_axes="sm")
  def _item(info):
    idx = info.index[0]
    gi, rest = lax.div(idx, grid_k * grid_n), lax.rem(idx, grid_k * grid_n)
    ki, ni = lax.div(rest, grid_n), lax.rem(rest, grid_n)
    first, blocks, start, end = first_ref[gi], blocks_ref[gi], start_ref[gi], end_ref[gi]

    def step(idx, lhs_smem, grad_smem, acc_ref):
      t = idx[0]

      @pl.when((t == 0) | (t == blocks - 1))  # blocks shared with a neighbouring group
      def _():
        rows = (first + t) * bt + _row_iota((bt, bk), interpret)
        a = lhs_smem[...]
        lhs_smem[...] = jnp.where((rows >= start) & (rows < end), a, jnp.zeros_like(a))
        plgpu.commit_smem()

      _mma(acc_ref, lhs_smem, grad_smem, a_transposed=True, interpret=interpret)

    def accumulate(acc_ref):
      @pl.when(blocks > 0)
      def _():
        plgpu.emit_pipeline(
            lambda idx, a, b: step(idx, a, b, acc_ref),
            grid=(blocks,),
            in_specs=[
                plgpu.BlockSpec((bt, bk), lambda t: (first + t, ki), transforms=_swizzled((bt, bk), lhs_gmem.dtype),
                                delay_release=1),
                plgpu.BlockSpec((bt, bn), lambda t: (first + t, ni), transforms=_swizzled((bt, bn), grad_gmem.dtype),
                                delay_release=1),
            ],
            max_concurrent_steps=tiling.max_concurrent_steps,
        )(lhs_gmem, grad_gmem)

      return acc_ref[...]

    acc = pl.run_scoped(accumulate, plgpu.ACC((bk, bn), jnp.float32))

    @functools.partial(pl.run_scoped, o_smem=plgpu.SMEM((bk, bn), out_gmem.dtype,
                                                         transforms=_swizzled((bk, bn), out_gmem.dtype)))
    def _(o_smem):
      o_smem[...] = acc.astype(o_smem.dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(o_smem, out_gmem.at[gi, pl.ds(ki * bk, bk), pl.ds(ni * bn, bn)])
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _tgmm_call(lhs, grad, group_sizes, *, num_groups, out_dtype, tiling, interpret):
  plgpu = pb.mosaic_gpu_module()
  m, k = lhs.shape
  n = grad.shape[1]
  g = group_sizes.shape[0] if num_groups is None else num_groups
  dtype = _compute_dtype(lhs, grad)
  if tiling is None:
    tiling = pb.choose("tgmm_mosaic", default_tiling, (m, k, n, g, jnp.dtype(dtype).name),
                       m=m, k=k, n=n, num_groups=g, dtype=dtype)
  bt, bk, bn = tiling.block_k, tiling.block_k_out, tiling.block_n
  lhs_p = _pad_to(lhs.astype(dtype), (1, bk))
  grad_p = _pad_to(grad.astype(dtype), (1, bn))
  tables = group_blocks(group_sizes, m, bt, g)
  out = plgpu.kernel(functools.partial(_tgmm_body, tiling=tiling, interpret=bool(interpret)),
                     out_type=jax.ShapeDtypeStruct((g, lhs_p.shape[1], grad_p.shape[1]), out_dtype),
                     grid=(tiling.num_sms or pb.num_sms(),), grid_names=("sm",), kernel_name="jaxtrain_tgmm_mosaic",
                     **pb.mosaic_kernel_kwargs(interpret=interpret))(*tables, lhs_p, grad_p)
  return out if out.shape[1:] == (k, n) else out[:, :k, :n]


# ----------------------------------------------------------------------------- entry points

_gmm, _tgmm = grouped_matmuls(_gmm_call, _tgmm_call)
gmm_mosaic, tgmm_mosaic = public_pair(_gmm, _tgmm, pb.interpret)
gmm_mosaic.__doc__ = "Mosaic GPU `gmm` (same contract as `gmm_reference`, 16-bit inputs); `tiling` forces tiles."
tgmm_mosaic.__doc__ = "Mosaic GPU `tgmm` (same contract as `tgmm_reference`, 16-bit inputs); `tiling` forces tiles."
gmm_mosaic.supported = pb.can_run_mosaic
tgmm_mosaic.supported = pb.can_run_mosaic
