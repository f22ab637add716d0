"""The CPU grouped matmul ("blocked") against the ragged_dot reference, forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.kernels import gmm, tgmm

CASES = [
    [10, 0, 17, 20],  # an empty group, sizes not multiples of the block
    [0, 0, 0, 47],  # everything in the last group
    [64, 0, 0, 0],  # exactly one block
    [5, 6, 7, 8],  # sum < m: trailing rows are padding and must produce zeros
]


@pytest.mark.parametrize("sizes", CASES)
@pytest.mark.parametrize("transpose_rhs", [False, True])
def test_blocked_gmm_matches_reference_forward_and_grads(sizes, transpose_rhs):
  rng = np.random.default_rng(sum(sizes))
  m, k, n = 64, 12, 10
  lhs = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  rhs = jnp.asarray(rng.normal(size=(4, n, k) if transpose_rhs else (4, k, n)), jnp.float32)
  gs = jnp.asarray(sizes, jnp.int32)
  cot = jnp.asarray(rng.normal(size=(m, n)), jnp.float32)

  def loss(impl):
    return lambda l, r: jnp.sum(gmm(l, r, gs, transpose_rhs=transpose_rhs, impl=impl) * cot)

  out_b = gmm(lhs, rhs, gs, transpose_rhs=transpose_rhs, impl="blocked")
  out_r = gmm(lhs, rhs, gs, transpose_rhs=transpose_rhs, impl="xla")
  np.testing.assert_allclose(out_b, out_r, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out_b)[sum(sizes):], 0)
  grads_b = jax.jit(jax.grad(loss("blocked"), argnums=(0, 1)))(lhs, rhs)
  grads_r = jax.grad(loss("xla"), argnums=(0, 1))(lhs, rhs)
  for a, b in zip(grads_b, grads_r):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_blocked_tgmm_matches_per_group_products():
  rng = np.random.default_rng(0)
  sizes = [3, 0, 9, 4]
  lhs, grad = rng.normal(size=(20, 5)).astype(np.float32), rng.normal(size=(20, 6)).astype(np.float32)
  out = np.asarray(tgmm(jnp.asarray(lhs), jnp.asarray(grad), jnp.asarray(sizes, jnp.int32), impl="blocked"))
  start = 0
  for g, size in enumerate(sizes):
    np.testing.assert_allclose(out[g], lhs[start:start + size].T @ grad[start:start + size], rtol=1e-5, atol=1e-5)
    start += size
