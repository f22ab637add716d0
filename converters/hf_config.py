"""Hugging Face `config.json` <-> the jaxtrain `model` config section.

`from_hf(hf)` reads a config.json dict (transformers-4 keys `rope_theta` / `rope_scaling` /
`num_experts` and transformers-5 keys `rope_parameters` / `num_local_experts` alike) and returns
the architecture fields of the `model` section. Every field that changes the numerics is either
mapped or rejected by name; keys we do not recognise at all are reported in a warning.
Optional fields take the defaults of the transformers 5 config class of the family
(`FAMILY_DEFAULTS`, checked against transformers by the tests).

`to_hf(cfg)` goes the other way for export, and `arch_signature(cfg)` reduces a `ModelConfig` to
what determines its numerics, so two configs can be compared field by field
(`signature_diff`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from jaxtrain.converters.errors import ConversionError, format_problems
from jaxtrain.converters.signature import signature_diff

log = logging.getLogger("jaxtrain.converters")

FAMILIES = ("qwen3", "qwen3_moe", "llama", "mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss")
ARCHITECTURES = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "llama": "LlamaForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}
MOE_FAMILIES = ("qwen3_moe", "mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss")
# model_types read as another family (same architecture, other sizes): Kimi-K2 releases name
# themselves kimi_k2 and run DeepseekV3ForCausalLM.
ALIASES = {"kimi_k2": "deepseek_v3"}
# Storage formats import dequantizes (converters/dequant.py), per family.
QUANTIZATION = {"deepseek_v3": ("fp8",), "gpt_oss": ("mxfp4",)}
GPT_OSS_DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                        "original_max_position_embeddings": 4096}

# Defaults of the transformers 5 config classes for optional fields (None = hidden // heads).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen3": dict(head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                  tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28),
    "qwen3_moe": dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                      tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                      sliding_window=4096, decoder_sparse_step=1, norm_topk_prob=False, mlp_only_layers=[]),
    "llama": dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                  tie_word_embeddings=False, max_position_embeddings=2048, mlp_bias=False),
    "mixtral": dict(head_dim=None, rms_norm_eps=1e-5, rope_theta=1000000.0, hidden_act="silu",
                    tie_word_embeddings=False, max_position_embeddings=4096 * 32, sliding_window=None),
    "qwen2_moe": dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
                      tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                      sliding_window=4096, max_window_layers=28, decoder_sparse_step=1, norm_topk_prob=False,
                      mlp_only_layers=[], qkv_bias=True),
    "deepseek_v3": dict(rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                        tie_word_embeddings=False, max_position_embeddings=4096, intermediate_size=18432,
                        moe_intermediate_size=2048, n_shared_experts=1, n_routed_experts=256,
                        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                        v_head_dim=128, qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8,
                        first_k_dense_replace=3, norm_topk_prob=True, rope_interleave=True, num_key_value_heads=128),
    "gpt_oss": dict(head_dim=64, rms_norm_eps=1e-5, rope_theta=150000.0, attention_bias=True, hidden_act="silu",
                    tie_word_embeddings=False, max_position_embeddings=131072, sliding_window=128,
                    num_experts_per_tok=4, swiglu_alpha=1.702, swiglu_limit=7.0, num_local_experts=128),
}

ACTIVATIONS_IN = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

# Keys that never change the numerics of the forward pass.
HARMLESS = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache", "initializer_range",
    "output_router_logits", "router_aux_loss_coef", "_name_or_path", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id",
    "tokenizer_class", "prefix", "task_specific_params", "problem_type", "pruned_heads", "cross_attention_hidden_size",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss",
    "auto_map", "pretraining_tp",  # pretraining_tp: ignored by transformers 5 modeling
    "attention_dropout", "router_jitter_noise", "mlp_bias", "qkv_bias", "use_sliding_window",  # checked explicitly
    "aux_loss_alpha", "seq_aux", "ep_size",  # DeepSeek training-time settings
}

ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate", "partial_rotary_factor"}

# Fields of the `model` section that come from the HF config (the rest are training choices:
# dtype, param_dtype, remat, moe_impl, capacity_factor, aux_loss_weight, z_loss_weight, init_from).
TRAINING_FIELDS = ("init_from", "dtype", "param_dtype", "remat", "moe_impl", "capacity_factor", "aux_loss_weight",
                   "z_loss_weight", "seq_aux_loss_weight", "router_bias_update_rate")


def is_hf_dir(path: str) -> bool:
  """A directory with a config.json that has a model_type (a jaxtrain workdir has no model_type)."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return False
  try:
    with open(cfg) as f:
      return "model_type" in json.load(f)
  except (OSError, json.JSONDecodeError):
    return True  # let read_hf_config report the problem


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no config.json in {hf_dir!r} (not a Hugging Face model directory)")
  try:
    with open(path) as f:
      hf = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path}: cannot parse ({e})") from e
  if not isinstance(hf, dict):
    raise ConversionError(f"{path}: expected a JSON object")
  return hf


def model_config_from_hf(hf_dir: str) -> dict:
  """The architecture fields of the `model` config section for a Hugging Face directory, e.g.
  `config.model.update(model_config_from_hf(d)); config.model.init_from = d`."""
  return from_hf(read_hf_config(hf_dir), source=os.path.join(hf_dir, "config.json"))


class _Reader:

  def __init__(self, hf: dict, family: str, source: str):
    self.hf, self.family, self.source = hf, family, source
    self.defaults = FAMILY_DEFAULTS[family]
    self.used: set[str] = set()
    self.problems: list[str] = []

  def required(self, key: str):
    self.used.add(key)
    if self.hf.get(key) is None:
      self.problems.append(f"{key}: required field is missing")
      return 0
    return self.hf[key]

  def get(self, key: str, default: Any = "__family__"):
    self.used.add(key)
    value = self.hf.get(key)
    if value is None:
      return self.defaults.get(key) if default == "__family__" else default
    return value

  def unsupported(self, key: str, message: str):
    self.problems.append(f"{key}={self.hf.get(key)!r}: {message}")


def _rope(r: _Reader, max_pos: int) -> tuple[float, dict]:
  hf = r.hf
  r.used.update({"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"})
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  for name, d in (("rope_parameters", params), ("rope_scaling", legacy)):
    if not isinstance(d, dict):
      r.problems.append(f"{name}={d!r}: expected an object")
      return 0.0, {"type": "none"}
    if any(isinstance(v, dict) for v in d.values()):
      r.problems.append(f"{name}: per-layer-type RoPE parameters are not supported")
      return 0.0, {"type": "none"}
  merged = {**legacy, **params}
  unknown = sorted(set(merged) - ROPE_KEYS)
  if unknown:
    r.problems.append(f"rope_parameters/rope_scaling: unsupported keys {unknown}")
  theta = merged.get("rope_theta", hf.get("rope_theta"))
  theta = float(r.defaults["rope_theta"] if theta is None else theta)
  partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
  if partial is not None and float(partial) != 1.0:
    r.problems.append(f"partial_rotary_factor={partial}: partial rotary embeddings are not supported")
  kind = merged.get("rope_type", merged.get("type")) or "default"
  rope: dict[str, Any] = {"type": "none"}

  def need(key):
    if merged.get(key) is None:
      r.problems.append(f"rope_parameters.{key}: required for rope_type {kind!r}")
      return 1.0
    return merged[key]

  if kind == "default":
    pass
  elif kind == "linear":
    rope = {"type": "linear", "factor": float(need("factor"))}
  elif kind == "llama3":
    rope = {"type": "llama3", "factor": float(need("factor")), "low_freq_factor": float(need("low_freq_factor")),
            "high_freq_factor": float(need("high_freq_factor")),
            "original_max_position_embeddings": int(merged.get("original_max_position_embeddings") or max_pos)}
  elif kind == "yarn":
    original = int(merged.get("original_max_position_embeddings") or max_pos)
    factor = merged.get("factor")
    factor = float(max_pos / original if factor is None else factor)
    rope = {"type": "yarn", "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": float(merged.get("beta_fast") or 32.0), "beta_slow": float(merged.get("beta_slow") or 1.0),
            "mscale": float(merged.get("mscale") or 0.0), "mscale_all_dim": float(merged.get("mscale_all_dim") or 0.0),
            "attention_factor": float(merged.get("attention_factor") or 0.0),
            "truncate": bool(merged.get("truncate", True))}
    if merged.get("attention_factor") is not None and float(merged["attention_factor"]) == 0.0:
      r.problems.append("rope_parameters.attention_factor=0: a zero attention factor is not supported")
  else:
    r.problems.append(f"rope_type={kind!r}: not supported (supported: default, linear, llama3, yarn)")
  from jaxtrain.models.config import rope_defaults
  full = rope_defaults().to_dict()
  full.update(rope)
  return theta, full


def from_hf(hf: dict, *, source: str = "config.json") -> dict:
  """HF config dict -> architecture fields of the jaxtrain `model` section."""
  family = hf.get("model_type")
  if family in ALIASES:
    log.info("%s: model_type %r is read as %s (same architecture)", source, family, ALIASES[family])
    family = ALIASES[family]
  if family not in FAMILIES:
    raise ConversionError(f"{source}: model_type {family!r} is not supported (supported: "
                          f"{', '.join(FAMILIES + tuple(ALIASES))})")
  if family == "gpt_oss" and not hf.get("rope_parameters") and not hf.get("rope_scaling"):
    hf = {**hf, "rope_parameters": {"rope_theta": hf.get("rope_theta", FAMILY_DEFAULTS["gpt_oss"]["rope_theta"]),
                                    **GPT_OSS_DEFAULT_ROPE}}  # what transformers assumes
  r = _Reader(hf, family, source)
  r.used.add("model_type")
  hidden = int(r.required("hidden_size"))
  heads = int(r.required("num_attention_heads"))
  layers = int(r.required("num_hidden_layers"))
  if family in ("llama", "deepseek_v3") or (family == "mixtral" and "num_key_value_heads" in hf):
    kv = int(r.get("num_key_value_heads", heads))
  else:
    kv = int(r.required("num_key_value_heads"))
  head_dim = r.get("head_dim")
  head_dim = int(head_dim) if head_dim else (hidden // heads if heads else 0)
  act = r.get("hidden_act")
  if act not in ACTIVATIONS_IN:
    r.unsupported("hidden_act", f"activation not supported (supported: {sorted(ACTIVATIONS_IN)})")
  max_pos = int(r.get("max_position_embeddings"))
  theta, rope = _rope(r, max_pos)
  section: dict[str, Any] = {
      "arch": family,
      "vocab_size": int(r.required("vocab_size")),
      "hidden_size": hidden,
      "num_layers": layers,
      "num_heads": heads,
      "num_kv_heads": kv,
      "head_dim": head_dim,
      "activation": ACTIVATIONS_IN.get(act, "silu"),
      "rms_norm_eps": float(r.get("rms_norm_eps")),
      "rope_theta": theta,
      "rope_scaling": rope,
      "max_position_embeddings": max_pos,
      "qk_norm": family in ("qwen3", "qwen3_moe"),
      "attention_bias": False,
      "attention_out_bias": False,
      "sliding_window": 0,
      "layer_types": (),
      "attention_sinks": False,
      "tie_word_embeddings": bool(r.get("tie_word_embeddings")),
      "initializer_range": float(r.get("initializer_range", 0.02)),
      "num_experts": 0,
      "num_experts_per_tok": 1,
      "moe_intermediate_size": 0,
      "norm_topk_prob": True,
      "decoder_sparse_step": 1,
      "mlp_only_layers": (),
      "first_k_dense": 0,
      "shared_expert_intermediate_size": 0,
      "shared_expert_gate": False,
      "router": "softmax_topk",
      "intermediate_size": int(r.required("intermediate_size")),
  }
  # Training-time-only numerics we do not implement: refuse rather than drop.
  if float(hf.get("attention_dropout") or 0.0) > 0:
    r.unsupported("attention_dropout", "attention dropout is not implemented; set it to 0.0 to train without it")
  if float(hf.get("router_jitter_noise") or 0.0) > 0:
    r.unsupported("router_jitter_noise", "router jitter is not implemented; set it to 0.0 to train without it")
  quant = hf.get("quantization_config")
  r.used.add("quantization_config")
  if quant:
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method not in QUANTIZATION.get(family, ()):
      r.unsupported("quantization_config", f"quant_method {method!r} is not supported for {family} (import "
                    f"dequantizes: {', '.join(f'{k}: {v[0]}' for k, v in QUANTIZATION.items())})")
    elif method == "fp8" and quant.get("fmt", "e4m3") != "e4m3":
      r.unsupported("quantization_config", f"fp8 format {quant.get('fmt')!r} is not supported (e4m3 only)")
  for key in ("final_logit_softcapping", "attn_logit_softcapping", "logits_scaling",
              "embedding_multiplier", "residual_multiplier", "attention_multiplier"):
    if hf.get(key) is not None:
      r.unsupported(key, "not supported")
    r.used.add(key)

  if family in ("qwen3", "qwen3_moe", "llama"):
    bias = bool(r.get("attention_bias"))
    section["attention_bias"] = section["attention_out_bias"] = bias
  if family == "qwen2_moe":
    section["attention_bias"] = bool(r.get("qkv_bias"))
  if family == "llama" and r.get("mlp_bias"):
    r.unsupported("mlp_bias", "biases on MLP projections are not supported")

  # Attention windows.
  if family in ("qwen3", "qwen2_moe"):
    use = bool(r.get("use_sliding_window"))
    window = r.get("sliding_window") if use else None
    types = r.get("layer_types", None)
    max_window_layers = r.get("max_window_layers")
    if window:
      if types is None:
        if family == "qwen2_moe":
          r.problems.append("layer_types: needed when use_sliding_window is true (transformers versions disagree "
                            "on which Qwen2-MoE layers slide)")
          types = ["full_attention"] * layers
        else:
          types = ["sliding_attention" if i >= max_window_layers else "full_attention" for i in range(layers)]
      if len(types) != layers or any(t not in ("full_attention", "sliding_attention") for t in types):
        r.problems.append(f"layer_types={types!r}: expected {layers} entries of full_attention/sliding_attention")
      elif "sliding_attention" in types:
        section["sliding_window"] = int(window)
        section["layer_types"] = tuple(types)
  elif family == "qwen3_moe":
    if r.get("use_sliding_window") and r.get("sliding_window"):
      section["sliding_window"] = int(r.get("sliding_window"))
  elif family == "mixtral":
    if r.get("sliding_window"):
      section["sliding_window"] = int(r.get("sliding_window"))
  if section["sliding_window"] and section["sliding_window"] < 0:
    r.unsupported("sliding_window", "must be positive")
  r.used.update({"sliding_window", "layer_types", "max_window_layers"})

  # Experts.
  if family in ("qwen3_moe", "qwen2_moe"):
    num = hf.get("num_experts", hf.get("num_local_experts"))
    r.used.update({"num_experts", "num_local_experts"})
    if num is None:
      r.problems.append("num_experts: required field is missing")
      num = 0
    section.update(
        num_experts=int(num),
        num_experts_per_tok=int(r.required("num_experts_per_tok")),
        moe_intermediate_size=int(r.required("moe_intermediate_size")),
        norm_topk_prob=bool(r.get("norm_topk_prob")),
        decoder_sparse_step=int(r.get("decoder_sparse_step")),
        mlp_only_layers=tuple(int(i) for i in (r.get("mlp_only_layers") or [])),
    )
    if section["decoder_sparse_step"] < 1:
      r.unsupported("decoder_sparse_step", "must be >= 1")
    if family == "qwen2_moe":
      shared = int(r.required("shared_expert_intermediate_size"))
      section.update(shared_expert_intermediate_size=shared, shared_expert_gate=shared > 0)
  elif family == "mixtral":
    num = hf.get("num_local_experts", hf.get("num_experts"))
    r.used.update({"num_experts", "num_local_experts"})
    if num is None:
      r.problems.append("num_local_experts: required field is missing")
      num = 0
    section.update(num_experts=int(num), num_experts_per_tok=int(r.required("num_experts_per_tok")),
                   moe_intermediate_size=section["intermediate_size"], norm_topk_prob=True)
  elif family == "deepseek_v3":
    _deepseek_v3(r, section, heads, kv)
  elif family == "gpt_oss":
    _gpt_oss(r, section, layers)
  if section["num_experts"] == 0 or family not in MOE_FAMILIES:
    # Dense model: MoE-only fields at neutral values.
    section.update(num_experts=0, num_experts_per_tok=1, moe_intermediate_size=0, mlp_only_layers=(),
                   decoder_sparse_step=1)

  if r.problems:
    raise ConversionError(format_problems(f"{source}: cannot convert this {family} config exactly:", r.problems))
  unknown = sorted(set(hf) - r.used - HARMLESS)
  if unknown:
    log.warning("%s: ignoring config keys not known to change %s numerics: %s", source, family, ", ".join(unknown))
  return section


def _deepseek_v3(r: _Reader, section: dict, heads: int, kv: int) -> None:
  """MLA attention, sigmoid group-limited routing with shared experts, first_k_dense_replace
  dense layers. Multi-token-prediction layers (num_nextn_predict_layers) are not part of the
  forward pass; their weights are skipped on import (see load.py)."""
  hf = r.hf
  if kv != heads:
    r.unsupported("num_key_value_heads", f"MLA expands keys/values for every head; must equal "
                  f"num_attention_heads={heads}")
  for key, allowed in (("scoring_func", ("sigmoid",)), ("topk_method", ("noaux_tc",)), ("moe_layer_freq", (1,))):
    r.used.add(key)
    if hf.get(key) is not None and hf[key] not in allowed:
      r.unsupported(key, f"only {allowed[0]!r} is supported (DeepSeek-V3 routing)")
  q_lora = hf["q_lora_rank"] if "q_lora_rank" in hf else r.defaults["q_lora_rank"]
  r.used.add("q_lora_rank")

  def group(key):
    r.used.add(key)
    if key in hf and hf[key] is None:
      return 1  # no group limit
    return int(r.get(key))

  num = hf.get("n_routed_experts", hf.get("num_local_experts"))
  num = r.defaults["n_routed_experts"] if num is None else int(num)
  moe_inter = int(r.get("moe_intermediate_size"))
  shared = int(r.get("n_shared_experts") or 0)
  bias = bool(r.get("attention_bias"))
  section.update(
      attention="mla", num_kv_heads=heads, qk_norm=False, attention_bias=bias, attention_out_bias=bias,
      q_lora_rank=int(q_lora or 0), kv_lora_rank=int(r.get("kv_lora_rank")),
      qk_nope_head_dim=int(r.get("qk_nope_head_dim")), qk_rope_head_dim=int(r.get("qk_rope_head_dim")),
      v_head_dim=int(r.get("v_head_dim")), rope_interleave=bool(r.get("rope_interleave")),
      num_experts=num, num_experts_per_tok=int(r.get("num_experts_per_tok")), moe_intermediate_size=moe_inter,
      norm_topk_prob=bool(r.get("norm_topk_prob")), first_k_dense=int(r.get("first_k_dense_replace") or 0),
      router="sigmoid_group", n_group=group("n_group"), topk_group=group("topk_group"),
      routed_scaling_factor=float(r.get("routed_scaling_factor")),
      shared_expert_intermediate_size=moe_inter * shared, shared_expert_gate=False,
      intermediate_size=int(r.get("intermediate_size")))
  section["head_dim"] = section["qk_nope_head_dim"] + section["qk_rope_head_dim"]
  r.used.update({"n_routed_experts", "num_local_experts", "num_nextn_predict_layers", "num_mtp_layers", "qk_head_dim",
                 "head_dim"})
  if num and section["n_group"] and num % section["n_group"]:
    r.unsupported("n_group", f"must divide n_routed_experts={num}")


def _gpt_oss(r: _Reader, section: dict, layers: int) -> None:
  """Biased attention with sinks, sliding/full layers, biased top-k-then-softmax router, experts
  with biases and the clamped SwiGLU."""
  hf = r.hf
  bias = bool(r.get("attention_bias"))
  window = r.get("sliding_window")
  types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
  if len(types) != layers or any(t not in ("full_attention", "sliding_attention") for t in types):
    r.problems.append(f"layer_types={types!r}: expected {layers} entries of full_attention/sliding_attention")
  elif window and "sliding_attention" in types:
    section.update(sliding_window=int(window), layer_types=tuple(types))
  num = hf.get("num_local_experts", hf.get("num_experts"))
  r.used.update({"num_local_experts", "num_experts"})
  if num is None:
    num = r.defaults["num_local_experts"]
  section.update(
      attention_bias=bias, attention_out_bias=bias, attention_sinks=True, num_experts=int(num),
      num_experts_per_tok=int(r.get("num_experts_per_tok")), moe_intermediate_size=section["intermediate_size"],
      norm_topk_prob=True, router="topk_softmax", expert_bias=True, expert_activation="clamped_swiglu",
      swiglu_alpha=float(r.get("swiglu_alpha")), swiglu_limit=float(r.get("swiglu_limit")))


# -- ModelConfig -> HF -------------------------------------------------------------------------

def _rope_out(cfg) -> tuple[dict, dict | None]:
  """(transformers-5 rope_parameters, legacy rope_scaling or None)."""
  rs = cfg.rope_scaling
  if rs.type == "none":
    return {"rope_type": "default", "rope_theta": cfg.rope_theta}, None
  if rs.type == "linear":
    extra = {"factor": rs.factor}
  elif rs.type == "llama3":
    extra = {"factor": rs.factor, "low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
             "original_max_position_embeddings": rs.original_max_position_embeddings or cfg.max_position_embeddings}
  elif rs.type == "yarn":
    extra = {"factor": rs.factor,
             "original_max_position_embeddings": rs.original_max_position_embeddings or cfg.max_position_embeddings,
             "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow, "truncate": rs.truncate}
    if rs.attention_factor:
      extra["attention_factor"] = rs.attention_factor
    if rs.mscale:
      extra["mscale"] = rs.mscale
    if rs.mscale_all_dim:
      extra["mscale_all_dim"] = rs.mscale_all_dim
  else:
    raise ConversionError(f"model.rope_scaling.type={rs.type!r} cannot be exported")
  return ({"rope_type": rs.type, "rope_theta": cfg.rope_theta, **extra},
          {"rope_type": rs.type, "type": rs.type, **extra})


def to_hf(cfg, *, dtype: str = "float32") -> dict:
  """ModelConfig -> a complete HF config.json dict for `cfg.arch` (checked by round trip)."""
  family = cfg.arch
  if family not in FAMILIES:
    raise ConversionError(f"model.arch={family!r} cannot be exported (supported: {', '.join(FAMILIES)})")
  if cfg.activation not in ACTIVATIONS_OUT:
    raise ConversionError(f"model.activation={cfg.activation!r} cannot be exported")
  params, legacy = _rope_out(cfg)
  n = cfg.num_layers
  hf: dict[str, Any] = {
      "architectures": [ARCHITECTURES[family]],
      "model_type": family,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": n,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.resolved_head_dim,
      "hidden_act": ACTIVATIONS_OUT[cfg.activation],
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": legacy,
      "rope_parameters": params,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "initializer_range": cfg.initializer_range,
      "attention_dropout": 0.0,
      "use_cache": True,
      "dtype": dtype,
  }
  moe = [cfg.is_moe_layer(i) for i in range(n)]
  if family in ("qwen3", "qwen3_moe", "llama"):
    hf["attention_bias"] = cfg.attention_bias
  if family == "llama":
    hf["mlp_bias"] = False
  if family == "qwen2_moe":
    hf["qkv_bias"] = cfg.attention_bias
  windows = [cfg.layer_window(i) for i in range(n)]
  window = max(windows)
  if family in ("qwen3", "qwen2_moe"):
    hf.update(use_sliding_window=bool(window), sliding_window=window or None,
              max_window_layers=n if not window else min([i for i in range(n) if windows[i]] or [n]),
              layer_types=["sliding_attention" if w else "full_attention" for w in windows])
  elif family in ("qwen3_moe", "mixtral"):
    hf.update(sliding_window=window or None)
    if family == "qwen3_moe":
      hf["use_sliding_window"] = bool(window)
  if family in ("qwen3_moe", "qwen2_moe"):
    step = cfg.decoder_sparse_step
    dense = sorted({i for i in range(n) if not moe[i] and (i + 1) % step == 0})
    hf.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
              moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
              decoder_sparse_step=step, mlp_only_layers=dense, router_aux_loss_coef=cfg.aux_loss_weight,
              output_router_logits=False)
    if family == "qwen2_moe":
      hf["shared_expert_intermediate_size"] = cfg.shared_expert_intermediate_size
  if family == "mixtral":
    hf.update(intermediate_size=cfg.moe_intermediate_size, num_local_experts=cfg.num_experts,
              num_experts_per_tok=cfg.num_experts_per_tok, router_jitter_noise=0.0,
              router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)
  if family == "deepseek_v3":
    inter = cfg.moe_intermediate_size or 1
    hf.update(num_key_value_heads=cfg.num_heads, head_dim=cfg.qk_rope_head_dim, q_lora_rank=cfg.q_lora_rank or None,
              kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
              qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, rope_interleave=cfg.rope_interleave,
              attention_bias=cfg.attention_bias, n_routed_experts=cfg.num_experts,
              num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
              n_shared_experts=cfg.shared_expert_intermediate_size // inter, first_k_dense_replace=cfg.first_k_dense,
              n_group=cfg.n_group, topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
              norm_topk_prob=cfg.norm_topk_prob, num_nextn_predict_layers=0, output_router_logits=False)
  if family == "gpt_oss":
    hf.update(attention_bias=cfg.attention_bias, sliding_window=window or None,
              layer_types=["sliding_attention" if w else "full_attention" for w in windows],
              num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
              intermediate_size=cfg.moe_intermediate_size, swiglu_alpha=cfg.swiglu_alpha,
              swiglu_limit=cfg.swiglu_limit, router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)
  check_representable(cfg, hf)
  return hf


def check_representable(cfg, hf: dict) -> None:
  """Raises if `hf` read back does not describe the same numerics as `cfg`."""
  from jaxtrain.models.config import ModelConfig
  back = ModelConfig.from_config({**from_hf(hf, source="generated config.json")})
  diff = signature_diff(cfg, back)
  if diff:
    raise ConversionError(format_problems(
        f"model.arch={cfg.arch!r}: this model cannot be expressed as a Hugging Face {cfg.arch} config; "
        f"these fields would change:", diff))
