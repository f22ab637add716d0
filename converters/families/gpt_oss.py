"""GPT-OSS: biased attention with per-head sinks on alternating sliding/full layers, a biased
top-k-then-softmax router, experts with biases and the clamped SwiGLU, stored fused per layer
(`[experts, in, out]`, gate/up interleaved)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import L, Rule

MOE = (
    Rule(L + "self_attn.sinks", "attn/sinks", when="attention_sinks"),
    Rule(L + "mlp.router.weight", "moe/router", "t1", when="moe"),
    Rule(L + "mlp.router.bias", "moe/router_bias", when="moe"),
    Rule(L + "mlp.experts.gate_up_proj", "moe/gate_up", "pairs", when="moe"),
    Rule(L + "mlp.experts.gate_up_proj_bias", "moe/gate_up_bias", "pairs", when="expert_bias"),
    Rule(L + "mlp.experts.down_proj", "moe/down", when="moe"),
    Rule(L + "mlp.experts.down_proj_bias", "moe/down_bias", when="expert_bias"),
)


def read(r: f.HfReader, section: dict) -> None:
  layers = section["num_layers"]
  bias = bool(r.get("attention_bias"))
  window = r.get("sliding_window")
  types = r.hf.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
  if f.check_layer_types(r, types, layers):
    f.set_windows(section, window, types)
  num = r.first("num_local_experts", "num_experts", default=r.defaults["num_local_experts"])
  section.update(
      attention_bias=bias, attention_out_bias=bias, attention_sinks=True, num_experts=int(num),
      num_experts_per_tok=int(r.get("num_experts_per_tok")), moe_intermediate_size=section["intermediate_size"],
      norm_topk_prob=True, router="topk_softmax", expert_bias=True, expert_activation="clamped_swiglu",
      swiglu_alpha=float(r.get("swiglu_alpha")), swiglu_limit=float(r.get("swiglu_limit")))


def write(cfg, hf: dict) -> None:
  windows = f.layer_windows(cfg)
  hf.update(attention_bias=cfg.attention_bias, sliding_window=max(windows) or None,
            layer_types=f.layer_types_out(windows), num_local_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok, intermediate_size=cfg.moe_intermediate_size,
            swiglu_alpha=cfg.swiglu_alpha, swiglu_limit=cfg.swiglu_limit, router_aux_loss_coef=cfg.aux_loss_weight,
            output_router_logits=False)


FAMILY = Family(
    name="gpt_oss",
    architecture="GptOssForCausalLM",
    hf_defaults=dict(head_dim=64, rms_norm_eps=1e-5, rope_theta=150000.0, attention_bias=True, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=131072, sliding_window=128,
                     num_experts_per_tok=4, swiglu_alpha=1.702, swiglu_limit=7.0, num_local_experts=128),
    weights=t.WeightTable(t.TOP, t.ATTENTION + MOE, t.COMMON_IGNORE),
    read=read,
    write=write,
    moe=True,
    quantization=("mxfp4",),
    default_rope={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                  "original_max_position_embeddings": 4096},
    example=dict(hidden_size=32, intermediate_size=16, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                 swiglu_limit=0.3, swiglu_alpha=1.5, max_position_embeddings=256,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0,
                                  "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32}),
)
