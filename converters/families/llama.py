"""Llama (1-3.x): plain GQA attention (optional bias), llama3 / yarn / linear RoPE scaling."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family


def read(r: f.HfReader, section: dict) -> None:
  bias = bool(r.get("attention_bias"))
  section.update(attention_bias=bias, attention_out_bias=bias)
  if r.get("mlp_bias"):
    r.unsupported("mlp_bias", "biases on MLP projections are not supported")


def write(cfg, hf: dict) -> None:
  hf.update(attention_bias=cfg.attention_bias, mlp_bias=False)


FAMILY = Family(
    name="llama",
    architecture="LlamaForCausalLM",
    hf_defaults=dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=2048, mlp_bias=False),
    weights=t.WeightTable(t.TOP, t.ATTENTION + t.DENSE_MLP, t.COMMON_IGNORE),
    read=read,
    write=write,
    kv_heads_optional=True,
    example=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=24,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                 max_position_embeddings=256, rms_norm_eps=1e-5),
)
