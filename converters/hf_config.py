"""Hugging Face `config.json` <-> the jaxtrain `model` config section.

`from_hf(hf)` reads a config.json dict (transformers-4 keys `rope_theta` / `rope_scaling` /
`num_experts` and transformers-5 keys `rope_parameters` / `num_local_experts` alike) and returns
the architecture fields of the `model` section: the fields every family shares are read here,
the rest by the family's module (`converters/families/`). Every field that changes the numerics
is either mapped or rejected by name; keys we do not recognise at all are reported in a warning.
Optional fields take the defaults of the transformers config class of the family
(`Family.hf_defaults`, checked against transformers by the tests).

`to_hf(cfg)` goes the other way for export, checked by reading the result back
(`check_representable`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from jaxtrain.converters import families
from jaxtrain.converters.errors import ConversionError, format_problems
from jaxtrain.converters.hf_fields import ACTIVATIONS_IN, ACTIVATIONS_OUT, HfReader, read_rope, write_rope
from jaxtrain.converters.signature import signature_diff

from jaxtrain.models.config import ModelConfig

log = logging.getLogger("jaxtrain.converters")

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

# Fields of the `model` section that come from the HF config (the rest are training choices:
# dtype, param_dtype, fp8, remat, moe_impl, capacity_factor, aux_loss_weight, z_loss_weight, init_from).
TRAINING_FIELDS = ("init_from", "dtype", "param_dtype", "fp8", "remat", "moe_impl", "capacity_factor",
                   "aux_loss_weight", "z_loss_weight", "seq_aux_loss_weight", "router_bias_update_rate", "freeze")
VISION_TRAINING_FIELDS = ("remat", "row_capacity")  # of model.vision


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


def _unsupported_numerics(r: HfReader) -> None:
  """Training-time-only numerics we do not implement, quantized storage the family's import
  cannot dequantize, and logit scalings: refused rather than dropped."""
  hf, family = r.hf, families.get(r.family)
  if float(hf.get("attention_dropout") or 0.0) > 0:
    r.unsupported("attention_dropout", "attention dropout is not implemented; set it to 0.0 to train without it")
  if float(hf.get("router_jitter_noise") or 0.0) > 0:
    r.unsupported("router_jitter_noise", "router jitter is not implemented; set it to 0.0 to train without it")
  quant = hf.get("quantization_config")
  r.used.add("quantization_config")
  if quant:
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method not in family.quantization:
      supported = ", ".join(f"{f.name}: {f.quantization[0]}" for f in families.FAMILIES.values() if f.quantization)
      r.unsupported("quantization_config", f"quant_method {method!r} is not supported for {family.name} (import "
                    f"dequantizes: {supported})")
    elif method == "fp8" and quant.get("fmt", "e4m3") != "e4m3":
      r.unsupported("quantization_config", f"fp8 format {quant.get('fmt')!r} is not supported (e4m3 only)")
  for key in ("final_logit_softcapping", "attn_logit_softcapping", "logits_scaling",
              "embedding_multiplier", "residual_multiplier", "attention_multiplier"):
    if hf.get(key) is not None:
      r.unsupported(key, "not supported")
    r.used.add(key)


def from_hf(hf: dict, *, source: str = "config.json") -> dict:
  """HF config dict -> architecture fields of the jaxtrain `model` section."""
  model_type = hf.get("model_type")
  family = families.get(model_type, source=source)
  if model_type != family.name:
    log.info("%s: model_type %r is read as %s (same architecture)", source, model_type, family.name)
  if family.multimodal:
    return _from_hf_multimodal(hf, family, source)
  if family.default_rope and not hf.get("rope_parameters") and not hf.get("rope_scaling"):
    theta = hf.get("rope_theta", family.hf_defaults["rope_theta"])
    hf = {**hf, "rope_parameters": {"rope_theta": theta, **family.default_rope}}  # what transformers assumes
  r = HfReader(hf, family.name, family.hf_defaults, source)
  section = _read_language_model(r, family)
  _finish(r, family, source)
  return section


def _from_hf_multimodal(hf: dict, family, source: str) -> dict:
  """A vision-language config: `text_config` read by its text family, the top level and
  `vision_config` by the family itself; the top level's tie_word_embeddings governs."""
  r = HfReader(hf, family.name, family.hf_defaults, source)
  r.used.add("model_type")
  text = hf.get("text_config")
  if not isinstance(text, dict):
    raise ConversionError(f"{source}: a {family.name} config needs a text_config object")
  names = {f.name: f for f in family.text_families}
  text_family = names.get(text.get("model_type") or family.text_families[0].name)
  if text_family is None:
    raise ConversionError(f"{source}: text_config.model_type {text.get('model_type')!r} is not supported for "
                          f"{family.name} (supported: {', '.join(names)})")
  tr = r.nested("text_config", text_family.hf_defaults)
  section = _read_language_model(tr, text_family)
  tr.used.add("tie_word_embeddings")  # transformers ties by the top level's flag
  section.update(arch=family.name, tie_word_embeddings=bool(r.get("tie_word_embeddings")))
  family.read(r, section)
  _finish(r, family, source)
  return section


def _read_language_model(r: HfReader, family) -> dict:
  """The `model` section fields of a (text) family's config dict."""
  r.used.add("model_type")
  hidden = int(r.required("hidden_size"))
  heads = int(r.required("num_attention_heads"))
  layers = int(r.required("num_hidden_layers"))
  kv = int(r.get("num_key_value_heads", heads) if family.kv_heads_optional else r.required("num_key_value_heads"))
  head_dim = r.get("head_dim")
  head_dim = int(head_dim) if head_dim else (hidden // heads if heads else 0)
  act = r.get("hidden_act")
  if act not in ACTIVATIONS_IN:
    r.unsupported("hidden_act", f"activation not supported (supported: {sorted(ACTIVATIONS_IN)})")
  max_pos = int(r.get("max_position_embeddings"))
  theta, rope = read_rope(r, max_pos, family.rope_keys)
  section: dict[str, Any] = {
      "arch": family.name,
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
      "qk_norm": False,
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
  _unsupported_numerics(r)
  family.read(r, section)
  if section["sliding_window"] and section["sliding_window"] < 0:
    r.unsupported("sliding_window", "must be positive")
  r.used.update({"sliding_window", "layer_types", "max_window_layers"})
  if section["num_experts"] == 0 or not family.moe:
    # Dense model: MoE-only fields at neutral values.
    section.update(num_experts=0, num_experts_per_tok=1, moe_intermediate_size=0, mlp_only_layers=(),
                   decoder_sparse_step=1)
  return section


def _finish(r: HfReader, family, source: str) -> None:
  """Raises with every problem found; warns about keys nobody read."""
  if r.problems:
    raise ConversionError(format_problems(f"{source}: cannot convert this {family.name} config exactly:", r.problems))
  unknown = r.unknown(HARMLESS)
  if unknown:
    log.warning("%s: ignoring config keys not known to change %s numerics: %s", source, family.name,
                ", ".join(unknown))


def to_hf(cfg, *, dtype: str = "float32") -> dict:
  """ModelConfig -> a complete HF config.json dict for `cfg.arch` (checked by round trip)."""
  if cfg.arch not in families.FAMILIES:
    raise ConversionError(f"model.arch={cfg.arch!r} cannot be exported (supported: {', '.join(families.FAMILIES)})")
  family = families.FAMILIES[cfg.arch]
  if not family.multimodal:
    hf = {"architectures": [family.architecture], **_language_model_to_hf(cfg, family), "dtype": dtype}
  else:
    moe = cfg.num_experts > 0
    text_family = next((f for f in family.text_families if f.moe == moe), family.text_families[0])
    text = _language_model_to_hf(cfg, text_family)
    text.pop("tie_word_embeddings")
    hf = {"architectures": [family.architecture], "model_type": family.name, "text_config": text,
          "tie_word_embeddings": cfg.tie_word_embeddings, "dtype": dtype}
    family.write(cfg, hf)
  check_representable(cfg, hf)
  return hf


def _language_model_to_hf(cfg, family) -> dict:
  if cfg.activation not in ACTIVATIONS_OUT:
    raise ConversionError(f"model.activation={cfg.activation!r} cannot be exported")
  params, legacy = write_rope(cfg)
  hf: dict[str, Any] = {
      "model_type": family.name,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
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
  }
  family.write(cfg, hf)
  return hf


def check_representable(cfg, hf: dict) -> None:
  """Raises if `hf` read back does not describe the same numerics as `cfg`."""
  back = ModelConfig.from_config({**from_hf(hf, source="generated config.json")})
  diff = signature_diff(cfg, back)
  if diff:
    raise ConversionError(format_problems(
        f"model.arch={cfg.arch!r}: this model cannot be expressed as a Hugging Face {cfg.arch} config; "
        f"these fields would change:", diff))
