"""Pallas grouped matmul (gmm / tgmm and their custom VJPs) against the ragged_dot reference.

Tolerances.
- fp32: 1e-5 relative, elementwise, plus 1e-5 of the largest reference magnitude as the
  absolute floor (entries near zero after cancellation). Both sides accumulate exactly the same
  products in fp32; only the summation order differs (k tiles), which moves results by a few
  fp32 ulps (~1e-7).
- bf16: 2**-7 relative (one bf16 ulp: 8 mantissa bits) plus the same 1e-5 floor. Inputs are
  identical and both sides accumulate in fp32 and round once to bf16 at the end, so a
  summation-order difference can flip at most the last bit of an output.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.kernels import GmmTiling, gmm, gmm_reference, interpret_mode, resolve, tgmm, tgmm_reference
from jaxtrain.kernels.gmm_pallas import group_metadata, gmm_pallas, tgmm_pallas

COMPILED = os.environ.get("JAXTRAIN_PALLAS_INTERPRET", "").strip() == "0"  # see conftest.py
RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2.0 ** -7}
FAST_COMPILE = None if COMPILED else {"xla_backend_optimization_level": 0}  # interpret mode: compile time dominates


def assert_close(actual, expected, dtype, what=""):
  actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  expected = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
  assert actual.shape == expected.shape, what
  scale = np.abs(expected).max(initial=0.0)
  np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=1e-5 * scale, err_msg=what)


def make(m, k, n, g, dtype, transpose_rhs, seed):
  rng = np.random.default_rng(seed)
  lhs = jnp.asarray(rng.normal(size=(m, k)), dtype)
  rhs_shape = (g, n, k) if transpose_rhs else (g, k, n)
  rhs = jnp.asarray(rng.normal(size=rhs_shape), dtype)
  cot = jnp.asarray(rng.normal(size=(m, n)), dtype)
  return lhs, rhs, cot


def value_and_grads(fn, transpose_rhs):
  """out and d<out, cot>/d(lhs, rhs), all in one compiled function."""

  def run(lhs, rhs, group_sizes, cot):
    out, vjp = jax.vjp(lambda a, b: fn(a, b, group_sizes, transpose_rhs=transpose_rhs), lhs, rhs)
    return (out, *vjp(cot))

  return jax.jit(run, compiler_options=FAST_COMPILE)


# Group sizes are runtime data, so one compilation per (shape, tiling, transpose_rhs) runs every
# layout below; together they cover each edge case of the contract for m = 50 rows, 6 groups.
LAYOUTS = {
    "ragged_empty_padding": [10, 0, 17, 3, 12, 0],  # sum 42 < 50: rows 42.. are padding
    "balanced_full": [8, 8, 8, 8, 8, 10],
    "one_group_has_all": [0, 0, 50, 0, 0, 0],
    "trailing_empty_groups": [5, 7, 0, 0, 0, 0],
    "many_groups_in_one_tile": [1, 2, 3, 1, 0, 5],
    "all_groups_empty": [0, 0, 0, 0, 0, 0],
}
# (m, k, n, tiles, transpose_rhs)
SHAPES = {
    "tiles16": (50, 24, 40, (16, 16, 16), False),
    "tiles16_rhs_T": (50, 24, 40, (16, 16, 16), True),
    "tiles32": (50, 40, 72, (32, 32, 32), False),
    "tiles32_rhs_T": (50, 40, 72, (32, 16, 32), True),
}


def check_fp32(m, k, n, tiles, transpose_rhs, layouts, seed):
  lhs, rhs, cot = make(m, k, n, len(next(iter(layouts.values()))), jnp.float32, transpose_rhs, seed=seed)
  tiling = GmmTiling(*tiles)
  got_fn = value_and_grads(lambda *a, **kw: gmm_pallas(*a, tiling=tiling, **kw), transpose_rhs)
  want_fn = value_and_grads(gmm_reference, transpose_rhs)
  for layout, sizes in layouts.items():
    group_sizes = jnp.asarray(sizes, jnp.int32)
    got, want = got_fn(lhs, rhs, group_sizes, cot), want_fn(lhs, rhs, group_sizes, cot)
    for name, a, b in zip(("out", "d_lhs", "d_rhs"), got, want):
      assert a.dtype == b.dtype, (layout, name)
      assert_close(a, b, jnp.float32, f"{layout}: {name}")
    used = int(sum(sizes))
    assert not np.any(np.asarray(got[0][used:])), f"{layout}: rows past sum(group_sizes) must be zero"
    assert not np.any(np.asarray(got[1][used:])), f"{layout}: their input gradient must be zero too"
    for g, size in enumerate(sizes):
      if size == 0:
        assert not np.any(np.asarray(got[2][g])), f"{layout}: empty groups get a zero weight gradient"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gmm_fp32_forward_and_grads(shape):
  m, k, n, tiles, transpose_rhs = SHAPES[shape]
  check_fp32(m, k, n, tiles, transpose_rhs, LAYOUTS, seed=len(shape))


def test_gmm_fp32_tile_aligned_shapes():
  """m, k, n already multiples of the tiles: the no-padding path."""
  check_fp32(64, 32, 32, (16, 16, 16), False, {"balanced": [16, 16, 16, 16], "ragged": [20, 0, 33, 11]}, seed=2)


@pytest.mark.parametrize("transpose_rhs", [False, True], ids=["rhs", "rhs_T"])
def test_gmm_bf16_forward_and_grads(transpose_rhs):
  m, k, n, sizes = 72, 48, 32, [20, 0, 31, 9]
  group_sizes = jnp.asarray(sizes, jnp.int32)
  lhs, rhs, cot = make(m, k, n, len(sizes), jnp.bfloat16, transpose_rhs, seed=7)
  tiling = GmmTiling(16, 16, 16)
  got = value_and_grads(lambda *a, **kw: gmm_pallas(*a, tiling=tiling, **kw), transpose_rhs)(lhs, rhs, group_sizes, cot)
  want = value_and_grads(gmm_reference, transpose_rhs)(lhs, rhs, group_sizes, cot)
  for name, a, b in zip(("out", "d_lhs", "d_rhs"), got, want):
    assert a.dtype == jnp.bfloat16, name
    assert_close(a, b, jnp.bfloat16, name)


def test_gmm_preferred_element_type_fp32_from_bf16():
  sizes = [9, 0, 23]
  lhs, rhs, _ = make(40, 32, 16, 3, jnp.bfloat16, False, seed=3)
  group_sizes = jnp.asarray(sizes, jnp.int32)
  f = jax.jit(lambda a, b, s: gmm_pallas(a, b, s, preferred_element_type=jnp.float32, tiling=GmmTiling(16, 16, 16)),
              compiler_options=FAST_COMPILE)
  got = f(lhs, rhs, group_sizes)
  want = gmm_reference(lhs, rhs, group_sizes, preferred_element_type=jnp.float32)
  assert got.dtype == jnp.float32
  assert_close(got, want, jnp.float32)  # fp32 output: no bf16 rounding of the result


def test_tgmm_forward_and_grads():
  m, k, n, sizes = 50, 24, 40, [10, 0, 17, 3, 12]
  rng = np.random.default_rng(11)
  lhs = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  grad = jnp.asarray(rng.normal(size=(m, n)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(len(sizes), k, n)), jnp.float32)
  group_sizes = jnp.asarray(sizes, jnp.int32)

  def run(fn):
    def f(a, b, s, c):
      out, vjp = jax.vjp(lambda x, y: fn(x, y, s), a, b)
      return (out, *vjp(c))
    return jax.jit(f, compiler_options=FAST_COMPILE)(lhs, grad, group_sizes, cot)

  def dense(x, y, s):  # differentiable oracle (ragged_dot has no VJP in this mode)
    owner = jnp.searchsorted(jnp.cumsum(s), jnp.arange(x.shape[0]), side="right")
    onehot = (owner[:, None] == jnp.arange(s.shape[0])[None, :]).astype(x.dtype)
    return jnp.einsum("mg,mk,mn->gkn", onehot, x, y, precision="highest")

  got = run(lambda x, y, s: tgmm_pallas(x, y, s, tiling=GmmTiling(16, 16, 16)))
  want = run(dense)
  assert_close(got[0], tgmm_reference(lhs, grad, group_sizes), jnp.float32, "out vs ragged_dot")
  for name, a, b in zip(("out", "d_lhs", "d_grad"), got, want):
    assert_close(a, b, jnp.float32, name)
  assert not np.any(np.asarray(got[0][1])), "empty group -> zero weight gradient"


def test_group_metadata_covers_every_row_once():
  sizes = jnp.asarray([3, 0, 20, 0, 0, 1, 9], jnp.int32)  # sum 33 of m=40 rows
  m, tm = 40, 8
  ids, starts, ends, lo, hi = (np.asarray(x) for x in group_metadata(sizes, m, tm, 5))
  owner = np.full(m, -1)
  for t in range(5):
    for e in range(lo[t], hi[t]):
      rows = np.arange(t * tm, (t + 1) * tm)
      mine = rows[(rows >= starts[e]) & (rows < ends[e])]
      assert np.all(owner[mine] == -1), "a row was computed twice"
      owner[mine] = ids[e]
  expected = np.repeat(np.arange(7), np.asarray(sizes))
  np.testing.assert_array_equal(owner[:33], expected)
  assert np.all(owner[33:] == -1), "padding rows belong to no group"


def test_dispatch_pallas_interpret_and_fallback(caplog, monkeypatch):
  sizes = jnp.asarray([5, 11, 0, 8], jnp.int32)
  lhs, rhs, _ = make(24, 16, 16, 4, jnp.float32, False, seed=5)
  want = gmm_reference(lhs, rhs, sizes)
  with interpret_mode(True):
    assert resolve("gmm", "pallas")[0] == "pallas"
    assert resolve("tgmm", "pallas")[0] == "pallas"
    assert_close(jax.jit(lambda a, b, s: gmm(a, b, s, impl="pallas"), compiler_options=FAST_COMPILE)(lhs, rhs, sizes),
                 want, jnp.float32)
  if jax.default_backend() == "cpu":
    assert resolve("gmm", "auto")[0] == "blocked"
    monkeypatch.delenv("JAXTRAIN_PALLAS_INTERPRET", raising=False)
    with interpret_mode(False), caplog.at_level(logging.WARNING, logger="jaxtrain.kernels"):
      assert resolve("gmm", "pallas")[0] == "xla"
      got = tgmm(lhs, jnp.ones((24, 16)), sizes, impl="pallas")  # no exception: the reference runs
      np.testing.assert_allclose(got, tgmm_reference(lhs, jnp.ones((24, 16)), sizes), rtol=1e-6)
    monkeypatch.setenv("JAXTRAIN_PALLAS_INTERPRET", "1")
    assert resolve("gmm", "pallas")[0] == "pallas"  # the env var alone turns interpret mode on


@pytest.mark.compiled_only
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_gmm_default_tiling_realistic(dtype):
  """Default (GPU-sized) tiles on an MoE-like shape with skewed groups."""
  m, k, n, g = 4096, 512, 384, 16
  rng = np.random.default_rng(0)
  sizes = rng.multinomial(m - 100, rng.dirichlet(np.full(g, 0.3)))
  sizes[5] += sizes[3]
  sizes[3] = 0
  group_sizes = jnp.asarray(sizes, jnp.int32)
  lhs, rhs, cot = make(m, k, n, g, dtype, False, seed=1)
  got = value_and_grads(gmm_pallas, False)(lhs, rhs, group_sizes, cot)
  want = value_and_grads(gmm_reference, False)(lhs, rhs, group_sizes, cot)
  for name, a, b in zip(("out", "d_lhs", "d_rhs"), got, want):
    assert_close(a, b, dtype, name)
