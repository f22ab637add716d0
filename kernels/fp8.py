"""FP8 (e4m3) matmuls with fine-grained scaling, the DeepSeek-V3 recipe: `linear` for dense
projections and `gmm` for the experts' grouped matmuls.

Quantization. A tensor is cut into tiles of 128 along chosen axes, each tile gets an fp32 scale
amax / 448 (448 = the largest e4m3 value; an all-zero tile gets scale 1) and its values are
rounded to float8_e4m3fn (round to nearest even) after dividing by it. Activations and output
gradients use 1x128 tiles along the contraction dimension of the GEMM they feed, weights
128x128 blocks (so the quantized weight serves its transpose too). Error bound per element:
|x - dq(q(x))| <= 2^-4 |x| (3 mantissa bits) or, below e4m3's normal range (|x| < 2^-6 * scale),
<= 2^-10 * scale (half the subnormal step).

Autodiff (DeepSeek-V3's scaled backward, not a straight-through estimate of one quantized
product): for y = x @ w,
- forward  y  = Q_rows(x) @ Q_blocks(w)                       (x tiles along K)
- dgrad    dx = Q_rows(dy) @ Q_blocks(w)^T                    (dy tiles along N)
- wgrad    dw = Q_cols(x)^T @ Q_cols(dy)                      (x, dy tiles along the tokens M)
Every GEMM then has its scales constant over each 128-long piece of its contraction, so each is
one FP8 GEMM with per-piece rescaling in fp32. The fp32 master weights and everything outside
these GEMMs (norms, softmax, router, embeddings, head) stay in higher precision.

Implementations (`kernels.fp8`):
- "emulated" (the reference, any backend): quantize, dequantize to fp32 and multiply in fp32
  (HIGHEST precision): the FP8 numerics exactly, without FP8 hardware.
- "native" (GPU): dense GEMMs are real FP8 `dot_general`s (e4m3 x e4m3 -> fp32) over 128-long
  contraction pieces, rescaled and summed in fp32 (XLA writes each piece's fp32 product: a fused
  kernel that rescales in registers, as DeepGEMM does, is the next step for speed). Grouped
  matmuls have no FP8 kernel yet: they dequantize to bf16 (within 2^-9 relative of the fp32
  emulation: e4m3 keeps 4 significant bits, the fp32 scale adds rounding in bf16's 8) and run
  the bf16 grouped-matmul kernel.
- "auto": "native" on GPU, "emulated" elsewhere (`auto_table`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxtrain.kernels import dispatch

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = 448.0
TILE = 128
HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- quantization

def _tiled(x, axes):
  """x padded along `axes` to multiples of TILE and reshaped so each of those axes becomes
  (tiles, TILE); returns the reshaped array and the reduction axes of the TILE dims."""
  axes = sorted(a % x.ndim for a in axes)
  pads = [(0, (-x.shape[a]) % TILE if a in axes else 0) for a in range(x.ndim)]
  x = jnp.pad(x, pads) if any(p for _, p in pads) else x
  shape, within = [], []
  for a in range(x.ndim):
    if a in axes:
      shape += [x.shape[a] // TILE, TILE]
      within.append(len(shape) - 1)
    else:
      shape.append(x.shape[a])
  return x.reshape(shape), tuple(within)


def quantize(x, axes):
  """(q, scale): `x` in float8_e4m3fn with one fp32 scale per 128-tile along `axes` (one axis:
  1x128 tiles, two axes: 128x128 blocks). scale has each tiled axis replaced by its tile count."""
  tiles, within = _tiled(x.astype(jnp.float32), axes)
  amax = jnp.max(jnp.abs(tiles), axis=within, keepdims=True)
  scale = jnp.where(amax > 0, amax / E4M3_MAX, 1.0)
  q = jnp.clip(tiles / scale, -E4M3_MAX, E4M3_MAX).astype(E4M3)
  return _untile(q, x.shape, axes), jnp.squeeze(scale, axis=within)


def _untile(tiles, shape, axes):
  axes = sorted(a % len(shape) for a in axes)
  padded = [-(-d // TILE) * TILE if a in axes else d for a, d in enumerate(shape)]
  out = tiles.reshape(padded)
  return out[tuple(slice(0, d) for d in shape)]


def expand_scale(scale, shape, axes):
  """Per-tile scales broadcast back to every element of an array of `shape`."""
  axes = sorted(a % len(shape) for a in axes)
  for a in axes:
    scale = jnp.repeat(scale, TILE, axis=a)
  return scale[tuple(slice(0, d) for d in shape)]


def dequantize(q, scale, axes):
  return q.astype(jnp.float32) * expand_scale(scale, q.shape, axes)


def fake_quantize(x, axes, dtype=jnp.float32):
  """dequantize(quantize(x)): the values an FP8 GEMM sees, in `dtype`."""
  q, scale = quantize(x, axes)
  return dequantize(q, scale, axes).astype(dtype)


# ----------------------------------------------------------------------------- one GEMM

def _matmul_emulated(a, a_axes, b, b_axes):
  """a [M, K] @ b [K, N] in fp32 on the fake-quantized operands."""
  return jnp.matmul(fake_quantize(a, a_axes), fake_quantize(b, b_axes), precision=HIGHEST,
                    preferred_element_type=jnp.float32)


def _matmul_native(a, a_axes, b, b_axes):
  """a [M, K] @ b [K, N] as FP8 GEMMs over 128-long contraction pieces (the contraction is a tiled
  axis of both operands, so each piece has one scale per row of a and column of b)."""
  M, K = a.shape
  N = b.shape[1]
  qa, sa = quantize(a, a_axes)
  qb, sb = quantize(b, b_axes)
  Kp = -(-K // TILE) * TILE
  qa = jnp.pad(qa, ((0, 0), (0, Kp - K)))
  qb = jnp.pad(qb, ((0, Kp - K), (0, 0)))
  pieces = lax.dot_general(qa.reshape(M, Kp // TILE, TILE), qb.reshape(Kp // TILE, TILE, N),
                           (((2,), (1,)), ((1,), (0,))), preferred_element_type=jnp.float32)  # [KT, M, N]
  sa = expand_scale(sa, (M, Kp // TILE), [0] if 0 in a_axes else [])  # one scale per row and piece
  sb = expand_scale(sb, (Kp // TILE, N), [1] if 1 in b_axes else [])  # one per piece and column
  return jnp.einsum("kmn,mk,kn->mn", pieces, sa, sb, precision=HIGHEST)


_MATMUL = {"emulated": _matmul_emulated, "native": _matmul_native}


def _native_supported() -> bool:
  return dispatch.platform() == "gpu"


_matmul_native.supported = _native_supported
dispatch.register("fp8", "emulated", _matmul_emulated, reference=True)
dispatch.register("fp8", "native", _matmul_native)


# ----------------------------------------------------------------------------- dense

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot(x, w, impl):
  return _MATMUL[impl](x, (1,), w, (0, 1)).astype(x.dtype)


def _dot_fwd(x, w, impl):
  return _dot(x, w, impl), (x, w)


def _dot_bwd(impl, res, dy):
  x, w = res
  mm = _MATMUL[impl]
  dx = mm(dy, (1,), w.T, (0, 1))
  dw = mm(x.T, (1,), dy, (0,))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dot.defvjp(_dot_fwd, _dot_bwd)


def linear(x, w, *, contract: int = 1, impl: str = "auto"):
  """The FP8 form of `jnp.tensordot(x, w, contract)`: x `[..., K1..Kc]`, w `[K1..Kc, N...]`; the
  contracted dims are flattened into one K (blocks of 128 over the flattened weight matrix).
  Returns x's dtype."""
  name, _ = dispatch.resolve("fp8", impl)
  lead, k_dims = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  if tuple(w.shape[:contract]) != tuple(k_dims):
    raise ValueError(f"fp8.linear: contracting {k_dims} of x {x.shape} with w {w.shape}")
  out_dims = w.shape[contract:]
  K = math.prod(k_dims)
  y = _dot(x.reshape(-1, K), w.reshape(K, -1).astype(x.dtype), name)
  return y.reshape(*lead, *out_dims)


# ----------------------------------------------------------------------------- grouped

def _grouped_operand(x, axes, impl):
  """Fake-quantized operand for a grouped matmul: fp32 when emulating; bf16 on the native path,
  whose grouped kernels take 16-bit inputs."""
  return fake_quantize(x, axes, jnp.float32 if impl == "emulated" else jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _gmm(rows, w, group_sizes, gmm_impl, impl):
  from jaxtrain.kernels.gmm import gmm as grouped
  out = grouped(_grouped_operand(rows, (1,), impl), _grouped_operand(w, (1, 2), impl), group_sizes,
                preferred_element_type=jnp.float32, impl=gmm_impl)
  return out.astype(rows.dtype)


def _gmm_fwd(rows, w, group_sizes, gmm_impl, impl):
  return _gmm(rows, w, group_sizes, gmm_impl, impl), (rows, w, group_sizes)


def _gmm_bwd(gmm_impl, impl, res, dy):
  from jaxtrain.kernels.gmm import gmm as grouped, tgmm
  rows, w, group_sizes = res
  wq = _grouped_operand(w, (1, 2), impl)
  d_rows = grouped(_grouped_operand(dy, (1,), impl), wq, group_sizes, transpose_rhs=True,
                   preferred_element_type=jnp.float32, impl=gmm_impl)
  d_w = tgmm(_grouped_operand(rows, (0,), impl), _grouped_operand(dy, (0,), impl), group_sizes,
             num_groups=w.shape[0], preferred_element_type=jnp.float32, impl=gmm_impl)
  return d_rows.astype(rows.dtype), d_w.astype(w.dtype), None


_gmm.defvjp(_gmm_fwd, _gmm_bwd)


def gmm(rows, w, group_sizes, *, gmm_impl: str = "auto", impl: str = "auto"):
  """The FP8 form of `kernels.gmm(rows [m,k], w [g,k,n], group_sizes)`: rows in 1x128 tiles along
  k, each expert's weights in 128x128 blocks; the weight gradient quantizes rows and output
  gradients in 128-row tiles along the tokens (tiles aligned to row 0, so a tile may span two
  experts: it is one scale, still constant over each 128-long piece of every expert's
  contraction). `gmm_impl`: the grouped-matmul kernel that multiplies the dequantized values."""
  name, _ = dispatch.resolve("fp8", impl)
  return _gmm(rows, w.astype(rows.dtype), group_sizes, gmm_impl, name)
