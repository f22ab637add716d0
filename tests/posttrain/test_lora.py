"""LoRA adapters in the forward pass (attention, dense MLP, shared and routed experts) against
the same model with the adapters folded into its weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from jaxtrain.config import ConfigError
from jaxtrain.models import factory
from jaxtrain.models.adapters import LoRAParam
from jaxtrain.posttrain import lora as lora_lib
from tests.helpers import tiny_moe
from tests.posttrain.common import tiny_base


def _adapters(cfg, targets=lora_lib.DEFAULT_TARGETS, rank=4):
  return lora_lib.Adapters.from_config(ConfigDict({"rank": rank, "alpha": 8.0, "targets": targets, "rslora": False}),
                                       cfg)


def _models(cfg, adapters, adapter_values=None):
  """(model with adapters, adapters state, base params, rest); adapters random and non-zero
  unless `adapter_values` are given."""
  base, rest = tiny_base(cfg)
  graphdef, ad, _, _ = nnx.split(nnx.eval_shape(lambda: adapters.attach(factory.create(cfg, 0), 0)), LoRAParam,
                                 nnx.Param, ...)
  if adapter_values is None:  # numpy draws: no XLA program per adapter shape
    rng = np.random.default_rng(7)
    adapter_values = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), ad)
  return nnx.merge(graphdef, adapter_values, base, rest), adapter_values, base, rest


@pytest.mark.parametrize("changes", [
    dict(gmm_impl="xla"),
    dict(gmm_impl="blocked", shared_expert_intermediate_size=24, decoder_sparse_step=2),
    dict(moe_impl="capacity", capacity_factor=8.0),
])
def test_adapters_equal_merged_weights(changes):
  cfg = tiny_moe(**changes)
  adapters = _adapters(cfg)
  model, ad, base, rest = _models(cfg, adapters)
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  with_adapters = model(ids).logits
  graphdef, _, _ = factory.abstract_model(cfg)
  merged = nnx.merge(graphdef, lora_lib.merge(base, ad, adapters.scale), rest)
  reference = merged(ids).logits
  assert float(jnp.max(jnp.abs(with_adapters - nnx.merge(graphdef, base, rest)(ids).logits))) > 1e-2
  np.testing.assert_allclose(with_adapters, reference, atol=2e-5, rtol=2e-5)
  sites = {(str(p[-3]), str(p[-2])) for p, _ in nnx.to_flat_state(ad)}
  assert ("moe", "gate_up_lora") in sites and ("attn", "o_proj_lora") in sites


def test_new_adapters_leave_the_model_unchanged_and_train_only_themselves():
  cfg = tiny_moe(gmm_impl="xla")
  adapters = _adapters(cfg, "q_proj,v_proj,experts")
  model, ad, base, rest = _models(cfg, adapters, adapters.init(0, None))  # the trainer's initial adapters
  graphdef = nnx.graphdef(model)
  ids = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  plain_graph, _, _ = factory.abstract_model(cfg)
  np.testing.assert_array_equal(model(ids).logits, nnx.merge(plain_graph, base, rest)(ids).logits)

  def loss(ad_):
    return jnp.mean(nnx.merge(graphdef, ad_, base, rest)(ids).logits ** 2)

  grads = jax.jit(jax.grad(loss))(ad)
  b_grads = [g for p, g in nnx.to_flat_state(grads) if p[-1] == "b"]
  assert b_grads and all(float(jnp.max(jnp.abs(g.get_value()))) > 0 for g in b_grads)


def test_target_errors():
  cfg = tiny_moe()
  with pytest.raises(ConfigError, match="gate_proj and up_proj"):
    _adapters(cfg, "gate_proj")
  with pytest.raises(ConfigError, match="unknown target 'qproj'"):
    _adapters(cfg, "qproj")
  with pytest.raises(ConfigError, match="MLA"):
    _adapters(tiny_moe(attention="mla", q_lora_rank=0, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                       v_head_dim=8), "q_proj")
