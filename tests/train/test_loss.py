import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.train.loss import token_losses, token_losses_unchunked


@pytest.mark.parametrize("chunk", [7, 16, 50, 1000])
def test_chunked_loss_and_gradients_equal_unchunked(chunk):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(12, 50)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 50, (2, 5)))
  mask = jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.float32)

  def total(fn):
    return lambda h, w: jnp.sum(fn(h, w) * mask)

  chunked = total(lambda h, w: token_losses(h, w, t, vocab_chunk=chunk))
  plain = total(lambda h, w: token_losses_unchunked(h, w, t))
  np.testing.assert_allclose(chunked(h, w), plain(h, w), rtol=1e-6)
  for a, b in zip(jax.grad(chunked, argnums=(0, 1))(h, w), jax.grad(plain, argnums=(0, 1))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_plain_formulation_is_cross_entropy():
  rng = np.random.default_rng(1)
  h, w = rng.normal(size=(1, 3, 4)), rng.normal(size=(4, 6))
  t = np.array([[0, 5, 2]])
  logits = h @ w
  expected = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[0, np.arange(3), t[0]]
  np.testing.assert_allclose(token_losses_unchunked(jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32),
                                                    jnp.asarray(t))[0], expected, rtol=1e-5)
