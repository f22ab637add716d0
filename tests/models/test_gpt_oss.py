"""GPT-OSS (model_type gpt_oss): learned attention sinks, sliding/full layer patterns, biased
attention, biased top-k-then-softmax router, experts with biases, interleaved gate/up and the
clamped SwiGLU, exact against transformers; import/export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.models.hf_families import GPT_OSS, build, torch, transformers

import jaxtrain
from jaxtrain.converters import export_hf, from_hf, import_hf, to_hf
from jaxtrain.converters.signature import signature_diff
from jaxtrain.models.config import ModelConfig
from tests.converters.conftest import assert_export_is_exact_and_reloads, assert_logits_and_loss_match, tokens


@pytest.mark.parametrize("name", list(GPT_OSS))
def test_logits_and_loss_match_transformers(name, tmp_path):
  hf = build("gpt_oss", str(tmp_path), seed=len(name), **GPT_OSS[name])
  model = jaxtrain.from_pretrained(str(tmp_path))
  cfg = model.cfg
  assert cfg.attention_sinks and cfg.expert_bias and cfg.expert_activation == "clamped_swiglu"
  assert [cfg.layer_window(i) for i in range(cfg.num_layers)] == [
      GPT_OSS[name]["sliding_window"] if t == "sliding_attention" else 0 for t in hf.config.layer_types]
  assert_logits_and_loss_match(name, model, hf, tokens(2, 21, seed=len(name)))


def test_clamped_swiglu_matches_transformers():
  """layers.glu('clamped_swiglu') on the interleaved layout equals transformers' _apply_gate,
  with values well past the clamp on both sides."""
  import jax

  from jaxtrain.converters.tables import to_param
  from jaxtrain.models.layers import glu
  from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
  cfg = transformers.AutoConfig.for_model("gpt_oss", hidden_size=8, intermediate_size=16, num_local_experts=2,
                                          swiglu_limit=2.0, swiglu_alpha=1.3)
  experts = GptOssExperts(cfg)
  gate_up = 4 * torch.randn(64, 32, generator=torch.Generator().manual_seed(0))  # interleaved, |x| up to ~12
  ref = experts._apply_gate(gate_up).numpy()
  pairs = to_param("pairs", gate_up.numpy(), (64, 2, 16))
  ours = jax.jit(lambda h: glu("clamped_swiglu", alpha=1.3, limit=2.0)(h[:, 0], h[:, 1]))(pairs)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6, atol=1e-6)
  assert (np.abs(gate_up.numpy()) > 2.0).mean() > 0.3  # the clamps are exercised


def test_import_export_round_trip_and_transformers_reload(tmp_path):
  """import-hf -> export-hf is bit-exact (fused interleaved experts, biases, sinks); the export
  loads in transformers with no missing or unexpected keys and gives the original logits."""
  name = "oss-alternating-w4-yarn-clamped"
  hf_dir, ckpt, out = str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(tmp_path / "out")
  hf = build("gpt_oss", hf_dir, seed=3, **GPT_OSS[name])
  import_hf(hf_dir, ckpt)
  export_hf(ckpt, out)
  assert_export_is_exact_and_reloads(hf_dir, out, hf)


def test_config_round_trip(tmp_path):
  for i, kw in enumerate(GPT_OSS.values()):
    original = transformers.AutoConfig.for_model("gpt_oss", vocab_size=101, **kw)
    original.save_pretrained(str(tmp_path / f"a{i}"))
    with open(tmp_path / f"a{i}" / "config.json") as f:
      cfg = ModelConfig.from_config(from_hf(json.load(f)))
    exported = to_hf(cfg)
    assert exported["layer_types"] == list(original.layer_types)
    reread = transformers.AutoConfig.for_model("gpt_oss", **{k: v for k, v in exported.items()
                                                             if k not in ("model_type", "architectures")})
    reread.save_pretrained(str(tmp_path / f"b{i}"))
    with open(tmp_path / f"b{i}" / "config.json") as f:
      assert not signature_diff(cfg, ModelConfig.from_config(from_hf(json.load(f))))
  # A config.json without rope parameters gets transformers' GPT-OSS default (yarn, factor 32).
  bare = {"model_type": "gpt_oss", "vocab_size": 101, "hidden_size": 32, "intermediate_size": 16,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
  section = from_hf(bare)
  assert section["rope_scaling"]["type"] == "yarn" and section["rope_scaling"]["factor"] == 32.0
  assert section["layer_types"] == ("sliding_attention", "full_attention") and section["sliding_window"] == 128


def test_routed_experts_with_biases_and_clamped_glu_match_a_per_token_reference():
  """The routed-expert FFN with per-expert biases and the clamped SwiGLU, dropless (grouped
  matmul) and capacity (no drops at this capacity), against a per-token numpy loop; padding
  tokens get nothing (biases included)."""
  import jax

  from jaxtrain.models.layers import activation, glu
  from jaxtrain.parallel.moe import routed_experts
  rng = np.random.default_rng(0)
  N, E, X, I, K = 24, 8, 4, 6, 2
  x = rng.normal(size=(N, E)).astype(np.float32)
  gate_up = (0.7 * rng.normal(size=(X, E, 2, I))).astype(np.float32)
  down = (0.5 * rng.normal(size=(X, I, E))).astype(np.float32)
  gate_up_bias = rng.normal(size=(X, 2, I)).astype(np.float32)
  down_bias = rng.normal(size=(X, E)).astype(np.float32)
  ids = np.argsort(rng.normal(size=(N, X)), axis=1)[:, :K].astype(np.int32)
  weights = rng.uniform(0.1, 1.0, (N, K)).astype(np.float32)
  valid = np.arange(N) % 7 != 3
  unit = glu("clamped_swiglu", alpha=1.702, limit=1.0)
  ref = np.zeros((N, E))
  for n in range(N):
    for k in range(K):
      e = ids[n, k]
      h = np.einsum("e,eci->ci", x[n], gate_up[e]) + gate_up_bias[e]
      y = np.asarray(unit(h[0], h[1])) @ down[e] + down_bias[e]
      ref[n] += valid[n] * weights[n, k] * y
  for mode in ("dropless", "capacity"):
    out, load, dropped = jax.jit(lambda *a, mode=mode: routed_experts(
        *a, act=activation("silu"), mode=mode, capacity_factor=float(X), impl="xla", gate_up_bias=gate_up_bias,
        down_bias=down_bias, glu=unit))(x, ids, weights, valid, gate_up, down)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=2e-5, err_msg=mode)
    assert int(dropped) == 0 and int(np.sum(load)) == K * valid.sum()
