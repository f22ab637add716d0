"""config.json <-> model section: both key styles, rope schedules equal transformers', export
configs round-trip, and resolve_model_section (family defaults: test_registry.py)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from tests.converters.conftest import CONFIGS, build_hf, hf_config

import jaxtrain
from jaxtrain.config import ConfigError
from jaxtrain.converters import ConversionError, from_hf, resolve_model_section, to_hf
from jaxtrain.converters.signature import signature_diff
from jaxtrain.models.config import ModelConfig
from jaxtrain.models.rope import inv_frequencies


def saved_json(cfg, tmp_path) -> dict:
  cfg.save_pretrained(str(tmp_path))
  with open(tmp_path / "config.json") as f:
    return json.load(f)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_configs_round_trip(name, tmp_path):
  """config.json as transformers writes it -> model section -> config.json -> transformers ->
  model section: same numerics, and transformers reads our config.json to the same attributes."""
  import transformers
  model_type, kwargs = CONFIGS[name]
  original = hf_config(model_type, **kwargs)
  section = from_hf(saved_json(original, tmp_path / "a"))
  cfg = ModelConfig.from_config(section)
  exported = to_hf(cfg)
  (tmp_path / "b").mkdir()
  with open(tmp_path / "b" / "config.json", "w") as f:
    json.dump(exported, f)
  reread = transformers.AutoConfig.from_pretrained(str(tmp_path / "b"))
  assert not signature_diff(cfg, ModelConfig.from_config(from_hf(saved_json(reread, tmp_path / "c"))))
  for attr in ("num_key_value_heads", "tie_word_embeddings", "rms_norm_eps", "num_experts_per_tok",
               "norm_topk_prob", "mlp_only_layers", "decoder_sparse_step", "sliding_window", "layer_types",
               "attention_bias", "num_local_experts", "shared_expert_intermediate_size", "qkv_bias"):
    if hasattr(original, attr):
      assert getattr(reread, attr) == getattr(original, attr), (name, attr)
  theirs = {k: v for k, v in original.rope_parameters.items() if v is not None}
  ours = {k: v for k, v in reread.rope_parameters.items() if v is not None}
  for k, v in theirs.items():
    assert ours.get(k) == v or (k == "type"), (name, k, ours.get(k), v)


def test_old_and_new_key_styles_agree():
  base = dict(model_type="qwen3_moe", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=16, num_experts_per_tok=2,
              max_position_embeddings=256)
  v4 = dict(base, num_experts=8, rope_theta=5e5, rope_scaling={"type": "yarn", "factor": 4.0,
                                                               "original_max_position_embeddings": 64})
  v5 = dict(base, num_local_experts=8, rope_parameters={"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                                        "original_max_position_embeddings": 64})
  assert from_hf(v4) == from_hf(v5)
  assert from_hf(v4)["num_experts"] == 8 and from_hf(v4)["rope_scaling"]["type"] == "yarn"


ROPES = [
    ("linear", {"factor": 3.0}),
    ("llama3", {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    ("llama3", {"factor": 32.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 8192}),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 64}),
    ("yarn", {"factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
              "mscale": 1.0, "mscale_all_dim": 1.0}),
    ("yarn", {"factor": 8.0, "original_max_position_embeddings": 128, "mscale": 0.707, "mscale_all_dim": 0.5,
              "truncate": False}),
    ("yarn", {"factor": 2.0, "original_max_position_embeddings": 64, "attention_factor": 1.5}),
]


@pytest.mark.parametrize("kind,params", ROPES)
def test_rope_schedules_equal_transformers(kind, params):
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  cfg = hf_config("llama", hidden_size=64, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1,
                  max_position_embeddings=512,
                  rope_parameters={"rope_type": kind, "rope_theta": 50000.0, **params})
  theirs, their_factor = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
  section = from_hf(json.loads(cfg.to_json_string()))
  mc = ModelConfig.from_config(section)
  ours, our_factor = inv_frequencies(mc.resolved_head_dim, mc.rope_theta, mc.rope_scaling, mc.max_position_embeddings)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
  assert our_factor == pytest.approx(float(their_factor), rel=1e-7)
  # ... and what we export describes the same schedule.
  assert not signature_diff(mc, ModelConfig.from_config(from_hf(to_hf(mc))))


@pytest.mark.parametrize("change,field", [
    (dict(arch="llama", qk_norm=True), "qk_norm"),
    (dict(arch="qwen3", num_experts=0, attention_bias=True, attention_out_bias=False), "attention_out_bias"),
    (dict(arch="mixtral", decoder_sparse_step=2), "decoder_sparse_step"),
    (dict(arch="qwen3_moe", attention_sinks=True), "attention_sinks"),
    (dict(arch="qwen3_moe", shared_expert_intermediate_size=32), "shared_expert_intermediate_size"),
    (dict(arch="gpt2"), "gpt2"),
])
def test_export_refuses_configs_the_family_cannot_express(change, field):
  cfg = ModelConfig(vocab_size=64, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8).replace(**change)
  if change.get("arch") in ("llama", "mixtral"):
    cfg = cfg.replace(qk_norm=change.get("qk_norm", False))
  with pytest.raises(ConversionError, match=field):
    to_hf(cfg)


def test_unknown_keys_are_reported(caplog):
  d = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=4, some_new_knob=3)
  with caplog.at_level(logging.WARNING, logger="jaxtrain.converters"):
    from_hf(d)
  assert "some_new_knob" in caplog.text


def test_required_fields(tmp_path):
  d = dict(model_type="qwen3_moe", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2)
  with pytest.raises(ConversionError) as e:
    from_hf(d, source="x/config.json")
  assert "num_experts" in str(e.value) and "moe_intermediate_size" in str(e.value) and "x/config.json" in str(e.value)


def test_resolve_model_section(tmp_path):
  hf_dir = str(tmp_path / "hf")
  model_type, kwargs = CONFIGS["mixtral-gqa4-sliding"]
  build_hf(model_type, hf_dir, **{**kwargs, "vocab_size": 300})
  config = jaxtrain.load_config(base={"model": {"init_from": hf_dir, "remat": "full", "moe_impl": "capacity",
                                                "aux_loss_weight": 0.02, "dtype": "bfloat16"}})
  resolve_model_section(config)
  m = config.model
  assert (m.arch, m.hidden_size, m.num_kv_heads, m.num_experts, m.sliding_window, m.qk_norm, m.rms_norm_eps) == (
      "mixtral", 64, 2, 4, 7, False, 1e-5)
  assert (m.remat, m.moe_impl, m.aux_loss_weight, m.dtype) == ("full", "capacity", 0.02, "bfloat16")
  # A field the user set explicitly and that contradicts the checkpoint is an error naming it.
  # load_config resolves it already.
  with pytest.raises(ConfigError, match="model.hidden_size"):
    jaxtrain.load_config(base={"model": {"init_from": hf_dir, "hidden_size": 96}})
  # No init_from: nothing changes.
  config = jaxtrain.load_config(base={})
  assert resolve_model_section(config).model.arch == "qwen3_moe"
  # A jaxtrain checkpoint (import-hf output) resolves the same way.
  from jaxtrain.converters import import_hf
  import_hf(hf_dir, str(tmp_path / "ck"))
  config = jaxtrain.load_config(base={"model": {"init_from": str(tmp_path / "ck")}})
  resolve_model_section(config)
  assert (config.model.arch, config.model.sliding_window) == ("mixtral", 7)
  with pytest.raises(ConfigError, match="no such"):
    jaxtrain.load_config(base={"model": {"init_from": str(tmp_path / "gone")}})
  assert os.path.isdir(tmp_path / "ck" / "checkpoints" / "0")
