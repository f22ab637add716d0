"""Mosaic GPU grouped matmul (Hopper): the kernels in Pallas' GPU interpreter against the
ragged_dot reference, their lowering for CUDA, and the choice between our two GPU kernel
families.

The interpreter runs the kernels' TMA copies, pipelines, WGMMA and stores on the host (reads past
an array's end return zeros, as TMA does), so the tests check the work-item tables, the row
masking and the power-of-two row stores on CPU. One difference from the compiled path: the
interpreter reads WGMMA operands as stored, so a transposed operand is materialised first
(`gmm_mosaic._mma`); the lowering tests cover the compiled form.

Tolerance (bf16): 2**-7 relative (one bf16 ulp) plus 1e-5 of the largest magnitude: both sides
accumulate the same products in fp32 and round once to bf16, so only summation order differs.
"""

from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxtrain.kernels import dispatch, gmm, gmm_reference, interpret_mode, pallas_backend, resolve, tgmm_reference
from jaxtrain.kernels.gmm_mosaic import MosaicGmmTiling, gmm_mosaic, tgmm_mosaic, work_items

from tests.kernels.test_gmm_pallas import COMPILED, FAST_COMPILE, assert_close, make

pytestmark = pytest.mark.skipif(pallas_backend.mosaic_interpret_params() is None and not COMPILED,
                                reason="this JAX has no Mosaic GPU interpreter")

SMALL = MosaicGmmTiling(block_m=64, block_n=64, block_k=64, block_k_out=64, max_concurrent_steps=2, num_sms=3)
# m = 136 rows in 64-row tiles: group 0 and the start of group 2 share tile 0, group 2 spans two
# tiles, tile 1 holds the end of group 2, groups 3, 4 and 5 and the first padding rows (sum 120),
# tile 2 is padding only, groups 1 and 6 are empty.
M = 136
SIZES = [30, 0, 60, 3, 1, 26, 0]


def value_and_grads(fn, transpose_rhs):
  def run(lhs, rhs, group_sizes, cot):
    out, vjp = jax.vjp(lambda a, b: fn(a, b, group_sizes, transpose_rhs=transpose_rhs), lhs, rhs)
    return (out, *vjp(cot))

  return jax.jit(run, compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("transpose_rhs", [False, True], ids=["rhs", "rhs_T"])
def test_mosaic_gmm_forward_and_grads(transpose_rhs):
  """Forward with small tiles on 3 programs; the backward (an input-gradient gmm with the other
  rhs layout and the ragged-contracting tgmm) with the default 128-wide tiles."""
  m, k, n = M, 64, 64
  lhs, rhs, cot = make(m, k, n, len(SIZES), jnp.bfloat16, transpose_rhs, seed=3)
  group_sizes = jnp.asarray(SIZES, jnp.int32)
  got = value_and_grads(lambda *a, **kw: gmm_mosaic(*a, tiling=SMALL, **kw), transpose_rhs)(lhs, rhs, group_sizes, cot)
  want = value_and_grads(gmm_reference, transpose_rhs)(lhs, rhs, group_sizes, cot)
  for name, a, b in zip(("out", "d_lhs", "d_rhs"), got, want):
    assert a.dtype == jnp.bfloat16, name
    assert_close(a, b, jnp.bfloat16, name)
  used = sum(SIZES)
  assert not np.any(np.asarray(got[0][used:], np.float32)), "rows past sum(group_sizes) must be zero"
  assert not np.any(np.asarray(got[1][used:], np.float32)), "and so must their input gradient"
  for g, size in enumerate(SIZES):
    if size == 0:
      assert not np.any(np.asarray(got[2][g], np.float32)), f"empty group {g} gets a zero weight gradient"


def test_mosaic_tgmm_fp32_output_and_all_rows_used():
  """tgmm alone, fp32 output from bf16 inputs (the weight gradient of fp32 masters), with the
  last group ending at the last row (no padding) and m not a multiple of the row block."""
  m, k, n, sizes = 150, 64, 64, [40, 0, 45, 65]
  rng = np.random.default_rng(5)
  lhs = jnp.asarray(rng.normal(size=(m, k)), jnp.bfloat16)
  grad = jnp.asarray(rng.normal(size=(m, n)), jnp.bfloat16)
  group_sizes = jnp.asarray(sizes, jnp.int32)
  got = jax.jit(lambda a, b, s: tgmm_mosaic(a, b, s, preferred_element_type=jnp.float32, tiling=SMALL),
                compiler_options=FAST_COMPILE)(lhs, grad, group_sizes)
  assert got.dtype == jnp.float32
  exact = tgmm_reference(lhs.astype(jnp.float32), grad.astype(jnp.float32), group_sizes)  # bf16 is exact in fp32
  assert_close(got, exact, jnp.float32)
  assert not np.any(np.asarray(got[1]))


def test_work_items_cover_every_row_once():
  m, bm = M, 64
  piece, tile, lo, count = (np.asarray(x) for x in work_items(jnp.asarray(SIZES, jnp.int32), m, bm))
  assert len(piece) == -(-m // bm) + len(SIZES), "static bound: row tiles + groups"
  owner = np.full(m, -1)
  for p, t, a, c in zip(piece, tile, lo, count):
    rows = np.arange(t * bm + a, t * bm + a + c)
    assert c == 0 or (0 <= a and a + c <= bm), "an item stays inside its tile"
    assert np.all(owner[rows] == -1), "a row was written twice"
    owner[rows] = p
  np.testing.assert_array_equal(owner, np.concatenate([np.repeat(np.arange(len(SIZES)), SIZES),
                                                       np.full(m - sum(SIZES), len(SIZES))]))
  assert np.all(np.diff(piece[count > 0]) >= 0), "items are ordered by piece (weight reuse)"


# ----------------------------------------------------------------------------- lowering

MOSAIC_CALL = "mosaic_gpu_v2"


def lower_for_cuda(fn, *avals) -> str:
  with interpret_mode(False):
    exported = export.export(jax.jit(fn), platforms=["cuda"])(*avals)
  return exported.mlir_module()


def spec(shape, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("transpose_rhs,out_dtype", [(False, jnp.bfloat16), (True, jnp.float32)])
def test_mosaic_gmm_lowers_for_cuda(transpose_rhs, out_dtype):
  """The forward and both backward kernels at a DeepSeek-like expert shape (hidden 2048, expert
  width 768 zero-padded to the 128-column tile, 64 experts) lower through Pallas -> Mosaic GPU,
  which also checks that pipelines and output tiles fit in shared memory; PTX is only built on a
  GPU (experiments/gpu_check.sh)."""
  m, k, n, g = 4096, 2048, 768 + 32, 64
  rhs = spec((g, n, k) if transpose_rhs else (g, k, n))

  def value_and_grad(a, b, s):
    out, vjp = jax.vjp(lambda x, y: gmm_mosaic(x, y, s, transpose_rhs=transpose_rhs, preferred_element_type=out_dtype),
                       a, b)
    return out, vjp(out)

  text = lower_for_cuda(value_and_grad, spec((m, k)), rhs, spec((g,), jnp.int32))
  assert re.findall(r"custom_call @(\w+)", text) == [MOSAIC_CALL] * 3, "three Mosaic GPU kernels, nothing else"
  names = set(re.findall(r"jaxtrain_t?gmm_mosaic(?=_mosaic_gpu)", text))
  assert names == {"jaxtrain_gmm_mosaic", "jaxtrain_tgmm_mosaic"}


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("capability,version,expected", [
    ((9, 0), (0, 11), "mosaic"), ((9, 0), (0, 12), "mosaic"), ((9, 0), (0, 10), "triton"),
    ((8, 0), (0, 11), "triton"), ((10, 0), (0, 11), "triton"), (None, (0, 11), "triton")])
def test_gpu_kernel_family_by_device_and_jax(capability, version, expected):
  assert pallas_backend.gpu_kernel_backend(capability, version) == expected


def test_auto_table_by_device_kind(monkeypatch):
  monkeypatch.setattr(dispatch, "_OVERRIDES", {})
  assert dispatch.auto_choice("gmm", "cpu", "cpu") == "blocked"
  assert dispatch.auto_choice("gmm", "gpu", "NVIDIA H200") == "pallas"
  assert dispatch.auto_choice("attention", "METAL", "Apple M3") == "xla", "unmeasured platforms get the reference"
  dispatch.set_auto("gmm", "gpu", "mosaic", device_kind="NVIDIA H1*")
  assert dispatch.auto_choice("gmm", "gpu", "NVIDIA H100 80GB HBM3") == "mosaic"
  assert dispatch.auto_choice("gmm", "gpu", "NVIDIA A100-SXM4-80GB") == "pallas"
  assert dispatch.auto_choice("tgmm", "gpu", "NVIDIA H100 80GB HBM3") == "pallas", "overrides are per op"


def test_mosaic_dispatch_interpret_and_fallback(caplog, monkeypatch):
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU fallback")
  sizes = jnp.asarray([5, 11, 0, 8], jnp.int32)
  lhs, rhs, _ = make(24, 16, 16, 4, jnp.float32, False, seed=5)
  monkeypatch.delenv("JAXTRAIN_PALLAS_INTERPRET", raising=False)
  with interpret_mode(False), caplog.at_level(logging.WARNING, logger="jaxtrain.kernels"):
    assert resolve("gmm", "mosaic")[0] == "xla"
    np.testing.assert_array_equal(gmm(lhs, rhs, sizes, impl="mosaic"), gmm_reference(lhs, rhs, sizes))
  assert "cannot run" in caplog.text
  with interpret_mode(True), caplog.at_level(logging.WARNING, logger="jaxtrain.kernels"):
    assert resolve("gmm", "mosaic")[0] == "mosaic"
    got = jax.jit(lambda a, b, s: gmm(a, b, s, impl="mosaic"), compiler_options=FAST_COMPILE)(lhs, rhs, sizes)
  assert "16-bit inputs" in caplog.text, "fp32 goes to the Triton kernel (WGMMA would use TF32)"
  assert_close(got, gmm_reference(lhs, rhs, sizes), jnp.float32)
