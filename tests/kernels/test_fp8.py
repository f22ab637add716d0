"""FP8 GEMMs with fine-grained scaling (kernels/fp8.py): quantization error bounds, the scaled
backward (DeepSeek-V3's recipe, checked GEMM by GEMM), the native path's per-piece scaling
against the exact emulation, grouped matmuls, and the GPU lowering to real FP8 dot_generals.

Bounds. e4m3 keeps 3 mantissa bits: round-to-nearest errs by at most half an ulp, 2^-4 of the
value, in the normal range; below it (|x| / scale < 2^-6) the step is 2^-9 * scale, so the error is
at most 2^-10 * scale. A tile's largest magnitude maps to 448 exactly."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxtrain.kernels import fp8, gmm_reference, interpret_mode, tgmm_reference

F32 = jnp.float32
HI = jax.lax.Precision.HIGHEST


def close(got, want):
  """fp32 results of the same products in another order: 1e-5 relative, and 1e-6 of the largest
  magnitude where heavy-tailed inputs cancel."""
  want = np.asarray(want, np.float64)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def heavy_tailed(rng, shape):
  """Rows whose magnitudes differ by orders of magnitude (what per-tile scales are for), a zero
  tile and values deep in e4m3's subnormal range."""
  x = rng.normal(size=shape) * np.exp(rng.normal(size=(shape[0], 1)) * 3)
  x[0, :128] = 0.0
  x[1, :5] = [1e-9, -3e-8, 1.0, 1e-3, -2e-4]
  return jnp.asarray(x, F32)


def test_quantization_error_bound_and_scales():
  rng = np.random.default_rng(0)
  x = heavy_tailed(rng, (40, 300))  # 300 = 2 full tiles + a partial one
  q, scale = fp8.quantize(x, (1,))
  assert q.dtype == jnp.float8_e4m3fn and q.shape == x.shape and scale.shape == (40, 3)
  assert float(scale[0, 0]) == 1.0 and not np.any(np.asarray(q[0, :128], F32)), "zero tile: scale 1, zeros"
  dq = np.asarray(fp8.dequantize(q, scale, (1,)), np.float64)
  xs, s = np.asarray(x, np.float64), np.asarray(fp8.expand_scale(scale, x.shape, (1,)), np.float64)
  bound = np.maximum(2.0 ** -4 * np.abs(xs), 2.0 ** -10 * s)
  assert np.all(np.abs(dq - xs) <= bound * (1 + 1e-6)), float((np.abs(dq - xs) / bound).max())
  tiles = np.abs(np.asarray(q, np.float64)).reshape(40, -1)[:, :256].reshape(40, 2, 128).max(axis=-1)
  assert np.all((tiles == 448.0) | (tiles == 0.0)), "each tile's amax maps to e4m3's largest value"
  relative = np.abs(dq - xs)[np.abs(xs) > 1e-2 * s] / np.abs(xs)[np.abs(xs) > 1e-2 * s]
  assert 2.0 ** -7 < relative.max() <= 2.0 ** -4, "really rounded to 3 mantissa bits, not finer"


def test_weight_blocks_serve_the_transpose():
  w = heavy_tailed(np.random.default_rng(1), (300, 200))
  q, scale = fp8.quantize(w, (0, 1))
  assert scale.shape == (3, 2)
  q_t, scale_t = fp8.quantize(w.T, (0, 1))
  np.testing.assert_array_equal(np.asarray(q_t, F32), np.asarray(q, F32).T)
  np.testing.assert_array_equal(scale_t, scale.T)


def test_native_pieces_equal_the_emulation():
  """The native path (one FP8 GEMM per 128-long contraction piece, rescaled in fp32) computes the
  same numbers as dequantize-then-multiply for all three GEMM layouts; XLA:CPU runs FP8 dots too.
  (On a GPU, FP8 tensor cores accumulate a piece with fewer than fp32's bits, the reason for the
  128-long pieces: there the tolerance is 3e-4.)"""
  rng = np.random.default_rng(2)
  x, w, dy = heavy_tailed(rng, (64, 300)), heavy_tailed(rng, (300, 136)), heavy_tailed(rng, (64, 136))
  @jax.jit
  def both(x, w, dy):
    cases = ((x, (1,), w, (0, 1)), (dy, (1,), w.T, (0, 1)), (x.T, (1,), dy, (0,)))
    return [(fp8._matmul_native(*c), fp8._matmul_emulated(*c)) for c in cases]

  for got, want in both(x, w, dy):
    if jax.default_backend() == "cpu":
      close(got, want)
    else:
      np.testing.assert_allclose(got, want, rtol=3e-4, atol=3e-4 * float(jnp.abs(want).max()))


def test_linear_forward_and_scaled_backward():
  """y = Q_rows(x) Q_blocks(w); dx = Q_rows(dy) Q_blocks(w)^T; dw = Q_tokens(x)^T Q_tokens(dy), with
  Q the fake quantization tested above; and all of it within FP8 error of the exact fp32 GEMMs."""
  rng = np.random.default_rng(3)
  x = heavy_tailed(rng, (160, 256)).reshape(2, 80, 2, 128)  # contract=2: (heads, head_dim) -> 256
  w = jnp.asarray(rng.normal(size=(2, 128, 160)), F32)
  dy = jnp.asarray(rng.normal(size=(2, 80, 160)), F32)
  fq = fp8.fake_quantize

  @jax.jit
  def run(x, w, dy):
    y, vjp = jax.vjp(lambda a, b: fp8.linear(a, b, contract=2, impl="emulated"), x, w)
    x2, w2, dy2 = x.reshape(160, 256), w.reshape(256, 160), dy.reshape(160, 160)
    recipe = (jnp.dot(fq(x2, (1,)), fq(w2, (0, 1)), precision=HI), jnp.dot(fq(dy2, (1,)), fq(w2, (0, 1)).T, precision=HI),
              jnp.dot(fq(x2, (0,)).T, fq(dy2, (0,)), precision=HI))
    exact_y, exact_vjp = jax.vjp(lambda a, b: jnp.tensordot(a, b, 2, precision=HI), x, w)
    return (y, *vjp(dy)), recipe, (exact_y, *exact_vjp(dy))

  got, recipe, exact = run(x, w, dy)
  for a, b in zip(got, recipe):
    close(a.reshape(b.shape), b)
  for a, b in zip(got, exact):
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert 1e-3 < rel < 0.08, rel  # quantized (not exact), and only by FP8's few percent


def test_grouped_forward_and_scaled_backward():
  rng = np.random.default_rng(4)
  rows, w = heavy_tailed(rng, (150, 128)), jnp.asarray(rng.normal(size=(4, 128, 72)), F32)
  sizes = jnp.asarray([40, 0, 70, 30], jnp.int32)  # 10 padding rows
  dy = jnp.asarray(rng.normal(size=(150, 72)), F32)
  fq = fp8.fake_quantize

  @jax.jit
  def run(rows, w, dy, sizes):
    out, vjp = jax.vjp(lambda a, b: fp8.gmm(a, b, sizes, gmm_impl="xla", impl="emulated"), rows, w)
    recipe = (gmm_reference(fq(rows, (1,)), fq(w, (1, 2)), sizes),
              gmm_reference(fq(dy, (1,)), fq(w, (1, 2)), sizes, transpose_rhs=True),
              tgmm_reference(fq(rows, (0,)), fq(dy, (0,)), sizes))
    return (out, *vjp(dy)), recipe

  got, recipe = run(rows, w, dy, sizes)
  for a, b in zip(got, recipe):
    close(a, b)
  assert not np.any(np.asarray(got[2][1])), "an empty expert gets no gradient"
  # Any grouped kernel does the multiplication: here our Pallas one (interpreted in CI, see conftest.py).
  close(jax.jit(lambda a, b, s: fp8.gmm(a, b, s, gmm_impl="pallas", impl="emulated"))(rows, w, sizes), got[0])


def test_native_lowers_to_fp8_dots_for_cuda():
  def loss(x, w):  # the "native" GEMMs directly: dispatch would pick for the CPU this test runs on
    return jnp.sum(fp8._dot(x, w, "native").astype(F32))

  with interpret_mode(False):
    exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=["cuda"])(
        jax.ShapeDtypeStruct((4096, 2048), jnp.bfloat16), jax.ShapeDtypeStruct((2048, 1024), jnp.bfloat16))
  text = exported.mlir_module()
  fp8_dots = re.findall(r"stablehlo\.dot_general[^\n]*tensor<[^>]*f8E4M3FN>[^\n]*f8E4M3FN", text)
  assert len(fp8_dots) == 2, "dgrad and wgrad (the forward product is dead code under grad of a sum)"


def test_fp8_resolves_per_platform():
  from jaxtrain.kernels import dispatch
  assert dispatch.auto_choice("fp8", "gpu", "NVIDIA H200") == "native"
  assert dispatch.auto_choice("fp8", "cpu", "cpu") == "emulated"
  if jax.default_backend() == "cpu":
    assert dispatch.resolve("fp8", "native")[0] == "emulated", "no FP8 GEMMs on the CPU backend: emulate"
