"""`impl="tokamax"` against our references: the adapter's dimension numbers for both gmm layouts
and the ragged-contracting tgmm, and attention's per-query key ranges for packed documents,
sliding windows, GQA and MLA's unequal head dims, forward and gradients. Off GPU tokamax runs
its XLA implementations, so this checks our mapping onto its API (its GPU kernels are measured
by experiments/bench_kernels.py). Skipped where tokamax is not installed.

Tolerance: fp32 throughout, 1e-5 of the largest reference magnitude (different summation order
and, for attention, a separately normalised softmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.kernels import attention, attention_reference, gmm, gmm_reference, tgmm, tgmm_reference
from jaxtrain.kernels.tokamax_ops import key_ranges

pytest.importorskip("tokamax")


def close(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1.0))


def test_tokamax_gmm_and_tgmm_with_grads():
  rng = np.random.default_rng(0)
  m, k, n = 50, 24, 40
  sizes = jnp.asarray([10, 0, 17, 3, 12], jnp.int32)  # sum 42 < 50: padding rows
  lhs = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  rhs = jnp.asarray(rng.normal(size=(5, k, n)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(m, n)), jnp.float32)
  for transpose_rhs, w in ((False, rhs), (True, jnp.swapaxes(rhs, 1, 2))):
    def run(impl, w=w, transpose_rhs=transpose_rhs):
      out, vjp = jax.vjp(lambda a, b: gmm(a, b, sizes, transpose_rhs=transpose_rhs, impl=impl), lhs, w)
      return (out, *vjp(cot))
    for a, b in zip(run("tokamax"), run("xla")):
      close(a, b)
  close(tgmm(lhs, cot, sizes, impl="tokamax"), tgmm_reference(lhs, cot, sizes))
  assert not np.any(np.asarray(gmm(lhs, rhs, sizes, impl="tokamax")[42:])), "rows past the groups are zero"


def test_key_ranges_of_packed_rows():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0]], jnp.int32)
  start, end = key_ranges(seg, causal=True, sliding_window=2)
  np.testing.assert_array_equal(start, [[0, 0, 1, 3, 3, 5]])
  np.testing.assert_array_equal(end, [[1, 2, 3, 4, 5, 6]])
  start, end = key_ranges(seg, causal=False, sliding_window=None)
  np.testing.assert_array_equal(start, [[0, 0, 0, 3, 3, 5]])
  np.testing.assert_array_equal(end, [[3, 3, 3, 5, 5, 6]])


@pytest.mark.parametrize("causal,window,D,Dv", [(True, 5, 24, 8), (False, 7, 16, 16)])
def test_tokamax_attention_with_grads(causal, window, D, Dv):
  rng = np.random.default_rng(1)
  B, T, H, KVH = 2, 40, 4, 2
  q = jnp.asarray(rng.normal(size=(B, T, H, D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, T, KVH, D)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, T, KVH, Dv)), jnp.float32)
  seg = np.zeros((B, T), np.int32)
  seg[0, :10], seg[0, 10:33], seg[1, :30] = 1, 2, 1  # packed documents and padding
  seg = jnp.asarray(seg)
  cot = jnp.asarray(rng.normal(size=(B, T, H, Dv)), jnp.float32)

  def run(impl):
    out, vjp = jax.vjp(lambda *x: attention(*x, q_segment_ids=seg, causal=causal, sliding_window=window, impl=impl),
                       q, k, v)
    return (out, *vjp(cot))

  got, want = run("tokamax"), run("xla")
  for a, b in zip(got, want):
    close(a, b)
  assert not np.any(np.asarray(got[0][1, 30:])), "padding rows are zero"


def test_tokamax_attention_sinks_use_the_reference(caplog):
  q = jnp.ones((1, 8, 2, 8))
  sinks = jnp.zeros((2,))
  out = attention(q, q, q, sinks=sinks, impl="tokamax")
  close(out, attention_reference(q, q, q, sinks=sinks))
  assert "sinks" in caplog.text
