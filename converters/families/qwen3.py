"""Qwen3 (dense): q/k RMSNorm, optional attention bias, sliding windows on the layers from
`max_window_layers` on (or as `layer_types` says)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family


def read_windows(r: f.HfReader, section: dict, layers: int, *, types_required: bool) -> None:
  """Qwen-style windows: `use_sliding_window` + `sliding_window`, sliding on the layers
  `layer_types` marks (or, when absent and allowed, those from `max_window_layers` on)."""
  window = r.get("sliding_window") if r.get("use_sliding_window") else None
  types = r.get("layer_types", None)
  if not window:
    return
  if types is None:
    if types_required:
      r.problems.append(r.prefix + "layer_types: needed when use_sliding_window is true (transformers versions disagree "
                        f"on which {r.family} layers slide)")
      types = ["full_attention"] * layers
    else:
      first = r.get("max_window_layers")
      types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
  if f.check_layer_types(r, types, layers):
    f.set_windows(section, window, types)


def write_windows(cfg, hf: dict) -> None:
  windows = f.layer_windows(cfg)
  window, n = max(windows), cfg.num_layers
  hf.update(use_sliding_window=bool(window), sliding_window=window or None,
            max_window_layers=n if not window else min([i for i in range(n) if windows[i]] or [n]),
            layer_types=f.layer_types_out(windows))


def read(r: f.HfReader, section: dict) -> None:
  bias = bool(r.get("attention_bias"))
  section.update(qk_norm=True, attention_bias=bias, attention_out_bias=bias)
  read_windows(r, section, section["num_layers"], types_required=False)


def write(cfg, hf: dict) -> None:
  hf["attention_bias"] = cfg.attention_bias
  write_windows(cfg, hf)


FAMILY = Family(
    name="qwen3",
    architecture="Qwen3ForCausalLM",
    hf_defaults=dict(head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                     sliding_window=4096, max_window_layers=28),
    weights=t.WeightTable(t.TOP, t.ATTENTION + t.DENSE_MLP, t.COMMON_IGNORE),
    read=read,
    write=write,
    example=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=4, head_dim=8, attention_bias=True, use_sliding_window=True, sliding_window=6,
                 max_window_layers=1, rope_parameters={"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 32},
                 max_position_embeddings=128, rms_norm_eps=1e-5),
)
