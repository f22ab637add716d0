"""The model with Pallas kernels (interpret mode on CPU) computes what it computes with the XLA
references: same loss, same gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain import kernels
from jaxtrain.models.decoder import Decoder
from jaxtrain.train.loss import token_losses
from tests.helpers import random_batch, tiny_moe


def _loss_and_grads(attention: str, gmm: str):
  cfg = tiny_moe(num_layers=2, attention_sinks=True, sliding_window=6,
                 layer_types=("sliding_attention", "full_attention"), attention_impl=attention, gmm_impl=gmm)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  params = jax.jit(lambda: nnx.state(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param))()
  batch = {k: jnp.asarray(v) for k, v in random_batch(2, 24, cfg.vocab_size, docs_per_row=2).items()}
  batch["segment_ids"] = batch["segment_ids"].at[1, 20:].set(0)  # padding at the end of a row

  def loss(params):
    model = nnx.merge(graphdef, params)
    h, _, _ = model.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
    per_token = token_losses(h, model.head_weight(h.dtype), batch["target_ids"], vocab_chunk=1024)
    mask = (batch["loss_mask"] * (batch["segment_ids"] != 0)).astype(jnp.float32)
    return jnp.sum(per_token * mask) / jnp.sum(mask)

  with kernels.interpret_mode():
    return jax.jit(jax.value_and_grad(loss))(params)


def test_pallas_attention_and_gmm_match_xla_in_the_model():
  ref_loss, ref_grads = _loss_and_grads("xla", "xla")
  loss, grads = _loss_and_grads("pallas", "pallas")
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_attention_matches_xla_in_the_model(monkeypatch):
  """Blocks of 8 over 24 tokens: every layer really runs blockwise (sinks, a sliding window,
  packed documents and padding included)."""
  from jaxtrain.kernels import attention_chunked
  monkeypatch.setattr(attention_chunked, "BLOCK_Q", 8)
  monkeypatch.setattr(attention_chunked, "BLOCK_K", 8)
  ref_loss, ref_grads = _loss_and_grads("xla", "xla")
  loss, grads = _loss_and_grads("chunked", "xla")
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
