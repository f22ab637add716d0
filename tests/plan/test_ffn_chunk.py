"""`model.ffn_chunk` (long rows: dense MLPs and routed experts run a chunk of every row at a
time, recomputed in the backward pass) computes the same function as the whole row at once:
logits and every parameter's gradient agree; with the FP8 GEMMs (run inside the chunks) the
logits agree and the gradients within FP8's rounding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.models import factory
from tests.helpers import tiny_moe


@pytest.mark.parametrize("fp8", [False, True])
def test_sequence_chunked_ffn_matches_the_whole_row(fp8):
  # One dense layer then one MoE layer with a shared expert: both FFN kinds are chunked.
  cfg = tiny_moe(first_k_dense=1, shared_expert_intermediate_size=16, fp8=fp8)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 64)), jnp.int32)

  def loss_and_grads(chunk):
    model = factory.create(dataclasses.replace(cfg, ffn_chunk=chunk), seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      out = nnx.merge(graphdef, p, rest)(ids)
      return jnp.mean(jax.nn.log_softmax(out.logits.astype(jnp.float32))[..., 0]), out.logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, logits, grads

  v0, logits0, g0 = loss_and_grads(0)
  v1, logits1, g1 = loss_and_grads(16)  # 4 chunks per row
  np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    a, b = np.asarray(a), np.asarray(b)
    if fp8:  # the backward's FP8 scaling groups span tokens, so chunks quantize the gradients differently
      assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b) + 1e-6
    else:
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
