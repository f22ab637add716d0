"""Shared pieces of the Hugging Face config mapping that family modules build on: the reader
that tracks which config.json keys were used and what cannot be converted, RoPE parameters
both ways, activations, and per-layer sliding windows."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtrain.converters.errors import ConversionError
from jaxtrain.models.config import RopeScaling

ACTIVATIONS_IN = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}

ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate", "partial_rotary_factor"}
WINDOW_TYPES = ("full_attention", "sliding_attention")
FAMILY_DEFAULT = object()  # `HfReader.get`: fall back to the family's transformers default


class HfReader:
  """A config.json dict read by one family: every key read is recorded (the rest is reported
  as unknown), and every problem is collected so all of them are reported at once."""

  def __init__(self, hf: dict, family: str, defaults: dict, source: str, *, problems: list | None = None,
               prefix: str = ""):
    self.hf, self.family, self.defaults, self.source = hf, family, defaults, source
    self.used: set[str] = set()
    self.problems: list[str] = [] if problems is None else problems
    self.prefix = prefix  # "vision_config." for a nested reader: problems name the full key
    self.children: list[HfReader] = []

  def nested(self, key: str, defaults: dict) -> "HfReader":
    """A reader of the sub-config `key` (e.g. vision_config) sharing this reader's problems."""
    self.used.add(key)
    value = self.hf.get(key)
    if value is not None and not isinstance(value, dict):
      self.problems.append(f"{self.prefix}{key}: expected an object, got {type(value).__name__}")
      value = None
    child = HfReader(value or {}, self.family, defaults, self.source, problems=self.problems,
                     prefix=f"{self.prefix}{key}.")
    self.children.append(child)
    return child

  def unknown(self, harmless) -> list[str]:
    """Keys never read here or in nested readers (full dotted names), minus `harmless`."""
    own = [self.prefix + k for k in sorted(set(self.hf) - self.used - set(harmless))]
    return own + [k for child in self.children for k in child.unknown(harmless)]

  def required(self, key: str):
    self.used.add(key)
    if self.hf.get(key) is None:
      self.problems.append(f"{self.prefix}{key}: required field is missing")
      return 0
    return self.hf[key]

  def get(self, key: str, default: Any = FAMILY_DEFAULT):
    self.used.add(key)
    value = self.hf.get(key)
    if value is None:
      return self.defaults.get(key) if default is FAMILY_DEFAULT else default
    return value

  def first(self, *keys: str, default: Any = None):
    """The first of `keys` present (transformers versions name some fields differently)."""
    self.used.update(keys)
    for key in keys:
      if self.hf.get(key) is not None:
        return self.hf[key]
    return default

  def unsupported(self, key: str, message: str):
    self.problems.append(f"{self.prefix}{key}={self.hf.get(key)!r}: {message}")


# -- RoPE --------------------------------------------------------------------------------------

def read_rope(r: HfReader, max_pos: int, extra_keys: tuple[str, ...] = ()) -> tuple[float, dict]:
  """(rope_theta, the `model.rope_scaling` dict) from `rope_parameters` (transformers 5) and/or
  `rope_scaling` + `rope_theta` (transformers 4). `extra_keys`: keys the family reads itself."""
  hf = r.hf
  r.used.update({"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"})
  params = hf.get("rope_parameters") or {}
  legacy = hf.get("rope_scaling") or {}
  for name, d in (("rope_parameters", params), ("rope_scaling", legacy)):
    if not isinstance(d, dict):
      r.problems.append(r.prefix + f"{name}={d!r}: expected an object")
      return 0.0, {"type": "none"}
    if any(isinstance(v, dict) for v in d.values()):
      r.problems.append(r.prefix + f"{name}: per-layer-type RoPE parameters are not supported")
      return 0.0, {"type": "none"}
  merged = {**legacy, **params}
  unknown = sorted(set(merged) - ROPE_KEYS - set(extra_keys))
  if unknown:
    r.problems.append(r.prefix + f"rope_parameters/rope_scaling: unsupported keys {unknown}")
  theta = merged.get("rope_theta", hf.get("rope_theta"))
  theta = float(r.defaults["rope_theta"] if theta is None else theta)
  partial = merged.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
  if partial is not None and float(partial) != 1.0:
    r.problems.append(r.prefix + f"partial_rotary_factor={partial}: partial rotary embeddings are not supported")
  kind = merged.get("rope_type", merged.get("type")) or "default"
  rope: dict[str, Any] = {"type": "none"}

  def need(key):
    if merged.get(key) is None:
      r.problems.append(r.prefix + f"rope_parameters.{key}: required for rope_type {kind!r}")
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
      r.problems.append(r.prefix + "rope_parameters.attention_factor=0: a zero attention factor is not supported")
  else:
    r.problems.append(r.prefix + f"rope_type={kind!r}: not supported (supported: default, linear, llama3, yarn)")
  return theta, {**dataclasses.asdict(RopeScaling()), **rope}


def write_rope(cfg) -> tuple[dict, dict | None]:
  """(transformers-5 rope_parameters, legacy rope_scaling or None) for a ModelConfig."""
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
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
      if getattr(rs, key):
        extra[key] = getattr(rs, key)
  else:
    raise ConversionError(f"model.rope_scaling.type={rs.type!r} cannot be exported")
  return ({"rope_type": rs.type, "rope_theta": cfg.rope_theta, **extra},
          {"rope_type": rs.type, "type": rs.type, **extra})


# -- sliding windows ---------------------------------------------------------------------------

def check_layer_types(r: HfReader, types, layers: int) -> bool:
  if len(types) != layers or any(t not in WINDOW_TYPES for t in types):
    r.problems.append(r.prefix + f"layer_types={types!r}: expected {layers} entries of full_attention/sliding_attention")
    return False
  return True


def set_windows(section: dict, window, types) -> None:
  """Sliding window on the layers `types` marks (nothing when no layer slides)."""
  if window and "sliding_attention" in types:
    section.update(sliding_window=int(window), layer_types=tuple(types))


def layer_windows(cfg) -> list[int]:
  return [cfg.layer_window(i) for i in range(cfg.num_layers)]


def layer_types_out(windows: list[int]) -> list[str]:
  return ["sliding_attention" if w else "full_attention" for w in windows]


def dense_layers_out(cfg) -> list[int]:
  """mlp_only_layers for Qwen-style configs: dense layers that decoder_sparse_step alone would
  have made MoE."""
  step = cfg.decoder_sparse_step
  return sorted(i for i in range(cfg.num_layers) if not cfg.is_moe_layer(i) and (i + 1) % step == 0)
