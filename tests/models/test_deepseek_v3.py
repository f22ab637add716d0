"""DeepSeek-V3 / Kimi-K2 (model_type deepseek_v3): MLA, sigmoid group-limited routing with the
selection-only correction bias, shared experts and dense first layers, exact against
transformers; import/export round trip; MTP layers skipped with a notice; aux-loss-free
balancing in the train step."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from tests.models.hf_families import DEEPSEEK_V3, build, torch, transformers

import jaxtrain
from jaxtrain.converters import ConversionError, export_hf, from_hf, import_hf, to_hf
from jaxtrain.converters.signature import signature_diff
from jaxtrain.converters.safetensors_io import WeightDir
from jaxtrain.models.config import ModelConfig
from tests.converters.conftest import assert_export_is_exact_and_reloads, assert_logits_and_loss_match, tokens


@pytest.mark.parametrize("name", list(DEEPSEEK_V3))
def test_logits_and_loss_match_transformers(name, tmp_path):
  hf = build("deepseek_v3", str(tmp_path), seed=len(name), **DEEPSEEK_V3[name])
  model = jaxtrain.from_pretrained(str(tmp_path))
  assert model.cfg.attention == "mla" and model.cfg.router == "sigmoid_group"
  assert_logits_and_loss_match(name, model, hf, tokens(2, 21, seed=len(name)))


def test_router_matches_transformers_and_bias_only_selects():
  """Group-limited selection with a large correction bias: the same experts as transformers'
  router, weighted by the *unbiased* sigmoid scores (renormalised, scaled)."""
  import jax

  from jaxtrain.models.moe import route
  from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
  kw = dict(hidden_size=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
            routed_scaling_factor=2.5, norm_topk_prob=True)
  hf_cfg = transformers.AutoConfig.for_model("deepseek_v3", **kw)
  router = DeepseekV3TopkRouter(hf_cfg)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    router.weight.copy_(torch.randn(8, 16, generator=gen))
    router.e_score_correction_bias.copy_(2.0 * torch.randn(8, generator=gen))
  x = torch.randn(64, 16, generator=gen)
  with torch.no_grad():
    logits, ref_w, ref_ids = router(x)
  cfg = ModelConfig(num_experts=8, num_experts_per_tok=3, router="sigmoid_group", n_group=4, topk_group=2,
                    routed_scaling_factor=2.5, norm_topk_prob=True)
  ids, w, _ = jax.jit(lambda l, b: route(l, cfg, b))(logits.numpy(), router.e_score_correction_bias.numpy())
  ids, w = np.asarray(ids), np.asarray(w)
  order_ref, order = np.argsort(ref_ids.numpy(), 1), np.argsort(ids, 1)
  np.testing.assert_array_equal(np.take_along_axis(ids, order, 1), np.take_along_axis(ref_ids.numpy(), order_ref, 1))
  np.testing.assert_allclose(np.take_along_axis(w, order, 1), np.take_along_axis(ref_w.numpy(), order_ref, 1),
                             rtol=1e-6, atol=1e-7)
  unbiased = jax.jit(lambda l: route(l, cfg, None))(logits.numpy())[0]
  assert (np.sort(np.asarray(unbiased), 1) != np.sort(ids, 1)).any()  # the bias does change the choice


def test_import_export_round_trip_and_transformers_reload(tmp_path):
  """import-hf -> export-hf is bit-exact (router correction biases included, travelling as model
  state through the checkpoint); the export loads in transformers with no missing or unexpected
  keys and gives the original logits."""
  name = "ds-qlora-yarn-groups-shared-dense1"
  hf_dir, ckpt, out = str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(tmp_path / "out")
  hf = build("deepseek_v3", hf_dir, seed=3, **DEEPSEEK_V3[name])
  import_hf(hf_dir, ckpt)
  export_hf(ckpt, out)
  assert any(k.endswith("e_score_correction_bias") for k in WeightDir(out).infos)
  assert_export_is_exact_and_reloads(hf_dir, out, hf)


def test_config_round_trip_and_kimi_alias(tmp_path):
  for kw in DEEPSEEK_V3.values():
    original = transformers.AutoConfig.for_model("deepseek_v3", vocab_size=101, **kw)
    original.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
      saved = json.load(f)
    cfg = ModelConfig.from_config(from_hf(saved))
    exported = to_hf(cfg)
    reread = transformers.AutoConfig.for_model("deepseek_v3", **{k: v for k, v in exported.items()
                                                                 if k not in ("model_type", "architectures")})
    reread.save_pretrained(str(tmp_path / "b"))
    with open(tmp_path / "b" / "config.json") as f:
      assert not signature_diff(cfg, ModelConfig.from_config(from_hf(json.load(f))))
    # Kimi-K2 releases: model_type kimi_k2, the DeepSeek-V3 architecture.
    assert not signature_diff(cfg, ModelConfig.from_config(from_hf({**saved, "model_type": "kimi_k2"})))


@pytest.mark.parametrize("key, value", [("scoring_func", "softmax"), ("topk_method", "greedy"),
                                        ("num_key_value_heads", 2), ("quantization_config", {"quant_method": "gptq"})])
def test_unsupported_config_values_are_named(key, value):
  kw = DEEPSEEK_V3["ds-fullq-noshared-bias-plainrope"]
  saved = transformers.AutoConfig.for_model("deepseek_v3", vocab_size=101, **kw).to_dict()
  saved[key] = value
  with pytest.raises(ConversionError, match=key):
    from_hf(saved)


def test_mtp_layers_are_skipped_with_a_notice(tmp_path, caplog):
  """Real checkpoints carry num_nextn_predict_layers multi-token-prediction layers after the
  last decoder layer; they are skipped with a logged notice. Without MTP in the config the same
  tensors are an error naming them."""
  from safetensors.torch import load_file, save_file
  kw = DEEPSEEK_V3["ds-fullq-noshared-bias-plainrope"]
  hf_dir = str(tmp_path)
  build("deepseek_v3", hf_dir, seed=5, **kw)
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  n = kw["num_hidden_layers"]
  mtp = {f"model.layers.{n}.{k[len('model.layers.0.'):]}": v.clone() for k, v in tensors.items()
         if k.startswith("model.layers.0.")}
  mtp.update({f"model.layers.{n}.eh_proj.weight": torch.zeros(32, 64), f"model.layers.{n}.enorm.weight": torch.ones(32)})
  save_file({**tensors, **mtp}, path, metadata={"format": "pt"})
  with caplog.at_level(logging.WARNING, logger="jaxtrain.converters"):
    jaxtrain.from_pretrained(hf_dir)
  assert f"model.layers.{n}" in caplog.text and "multi-token-prediction" in caplog.text
  cfg_path = os.path.join(hf_dir, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["num_nextn_predict_layers"] = 0
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ConversionError, match=f"unexpected tensor model.layers.{n}.eh_proj.weight"):
    jaxtrain.from_pretrained(hf_dir)


def test_mla_decoding_with_kv_cache_matches_the_full_forward():
  """Prefill + decode through the (expanded) MLA key/value cache gives the full forward's logits."""
  import jax.numpy as jnp
  from flax import nnx

  from jaxtrain.models.decoder import Decoder
  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4, qk_norm=False,
                    attention="mla", q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
                    v_head_dim=6, rope_interleave=True, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                    router="sigmoid_group", n_group=4, topk_group=2, gmm_impl="xla", attention_impl="xla")
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)

  @nnx.jit
  def both(m, ids):
    out = m(ids[:, :6], cache=m.init_cache(2, 12))
    step = m(ids[:, 6:], cache=out.cache)
    return m(ids).logits, jnp.concatenate([out.logits, step.logits], axis=1)

  full, cached = both(model, ids)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5)


STEPS = 24


def test_aux_loss_free_bias_balances_a_skewed_router():
  """Train steps on a problem whose router starts heavily skewed (embeddings share a direction
  the router favours for two experts): with the bias update on, the expert-load CV falls well
  below its start; with it off (rate 0) it stays where it was. The bias lives in the model
  state, outside the optimizer."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from tests.helpers import random_batch
  from jaxtrain.models.decoder import Decoder
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.config import defaults as train_defaults
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.step import make_train_step

  base = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4, qk_norm=False,
                     attention="mla", q_lora_rank=0, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4,
                     v_head_dim=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                     router="sigmoid_group", n_group=1, topk_group=1, max_position_embeddings=64,
                     rope_theta=10000.0, gmm_impl="xla", attention_impl="xla", aux_loss_weight=0.0)
  tc = train_defaults()
  tc.update(global_batch=8, warmup_steps=1, steps=40, lr=1e-4)
  tx = make_optimizer(tc)
  rng = np.random.default_rng(0)
  direction = rng.normal(size=32).astype(np.float32)
  embed = (rng.normal(size=(64, 32)) + 0.7 * direction).astype(np.float32)
  batches = [random_batch(8, 16, 64, seed=i) for i in range(4)]

  cvs = {}
  for rate in (0.0, 0.02):
    cfg = base.replace(router_bias_update_rate=rate)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    # Skew: every token embedding shares `direction` (plus its own part); experts 0 and 1 route on it.
    model.embed[...] = jnp.asarray(embed)
    for stage in model.stages:
      for block in stage.blocks:
        router = block.moe.router
        router[...] = router[...].at[..., :, 0:2].add(0.5 * jnp.asarray(direction / np.linalg.norm(direction))[:, None])
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 rng=jax.random.key_data(jax.random.key(0)), model_state=model_state)
    step = jax.jit(make_train_step(graphdef, cfg, tc, tx, schedule(tc)))
    curve = []
    for i in range(STEPS):
      state, metrics = step(state, {k: jnp.asarray(v) for k, v in batches[i % 4].items()})
      curve.append(float(np.mean(metrics["moe/load_cv"])))
    bias = np.asarray(jax.tree.leaves(state.model_state)[0])
    cvs[rate] = (curve, bias)
  off, bias_off = cvs[0.0]
  on, bias_on = cvs[0.02]
  print(f"AUXFREE load CV: start {off[0]:.3f}; after {STEPS} steps: update off {off[-1]:.3f} "
        f"(min of last 5 {min(off[-5:]):.3f}), update on {on[-1]:.3f} (max of last 5 {max(on[-5:]):.3f})")
  print("AUXFREE curve on:", " ".join(f"{c:.2f}" for c in on))
  assert off[0] > 1.0 and on[0] == pytest.approx(off[0])
  assert min(off[-5:]) > 0.75 * off[0]  # stays skewed without the update
  assert max(on[-5:]) < 0.5 * off[0]  # balances with it
  assert not bias_off.any() and np.abs(bias_on).max() > 0.1
  assert bias_on[..., :2].mean() < bias_on[..., 2:].mean()  # favoured experts pushed down
