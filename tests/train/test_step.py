import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.train import state as state_lib
from jaxtrain.models import factory
from jaxtrain.parallel import rules
from jaxtrain.train.config import defaults as train_defaults
from jaxtrain.train.optimizer import decay_mask, make_optimizer, schedule
from jaxtrain.train.step import make_train_step
from tests.helpers import random_batch, tiny_moe

MESH = ConfigDict({"data": 1, "fsdp": -1, "expert": 1, "sequence": 1, "tensor": 1})


def _run(micro_batches: int, batch, **model_changes):
  cfg = tiny_moe(**model_changes)
  tc = train_defaults()
  tc.micro_batches = micro_batches
  tc.global_batch = batch["input_ids"].shape[0]
  mesh = make_mesh(MESH, jax.devices()[:1])
  with mesh_context(mesh):
    graphdef, abstract, _ = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, mesh)
    tx = make_optimizer(tc)
    state = state_lib.init_state(state_lib.init_params(cfg, 0, shardings), tx,
                                 state_lib.state_shardings(tx, abstract, shardings, mesh), 0)
    step = jax.jit(make_train_step(graphdef, cfg, tc, tx, schedule(tc)))
    new_state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
  return new_state, jax.device_get(metrics)


def test_gradient_accumulation_equals_one_big_batch():
  batch = random_batch(8, 16, 64, seed=0, docs_per_row=2)
  batch["loss_mask"][::3, 4:9] = 0  # uneven loss-token counts across micro-batches
  # The router's auxiliary losses are batch statistics (a product of means), computed per
  # micro-batch as everyone does; only the token loss is exactly additive, so switch them off.
  one, m1 = _run(1, batch, aux_loss_weight=0.0, z_loss_weight=0.0)
  four, m4 = _run(4, batch, aux_loss_weight=0.0, z_loss_weight=0.0)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  np.testing.assert_array_equal(m4["moe/load_max"], m1["moe/load_max"])
  for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_weight_decay_skips_norms_biases_and_sinks():
  cfg = tiny_moe(attention_bias=True, attention_sinks=True)
  _, abstract, _ = factory.abstract_model(cfg)
  mask = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(decay_mask(abstract))}
  assert not any(m for k, m in mask.items() if "norm" in k or "bias" in k or "sinks" in k)
  assert all(m for k, m in mask.items() if k.endswith("['q_proj']") or k.endswith("['gate_up']"))


def test_schedule_warmup_then_cosine_to_floor():
  tc = train_defaults()
  tc.lr, tc.steps, tc.warmup_steps, tc.min_lr_ratio = 1.0, 100, 10, 0.1
  s = schedule(tc)
  assert float(s(0)) == pytest.approx(0.1) and float(s(9)) == pytest.approx(1.0)
  assert float(s(10)) > float(s(50)) > float(s(99)) >= 0.1 - 1e-6
  tc.schedule = "constant"
  assert float(schedule(tc)(50)) == 1.0
