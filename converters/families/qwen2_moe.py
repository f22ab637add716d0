"""Qwen2-MoE: biased q/k/v, Qwen-style routed experts plus a gated shared expert, sliding
windows as `layer_types` says."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.families import qwen3, qwen3_moe
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import ALL, L, Rule

SHARED_EXPERT = (
    Rule(L + "mlp.shared_expert.gate_proj.weight", "moe/shared/gate_up", "t1", (ALL, 0, ALL), when="shared_expert"),
    Rule(L + "mlp.shared_expert.up_proj.weight", "moe/shared/gate_up", "t1", (ALL, 1, ALL), when="shared_expert"),
    Rule(L + "mlp.shared_expert.down_proj.weight", "moe/shared/down", "t1", when="shared_expert"),
    Rule(L + "mlp.shared_expert_gate.weight", "moe/shared_gate", "t1", when="shared_expert_gate"),
)


def read(r: f.HfReader, section: dict) -> None:
  section["attention_bias"] = bool(r.get("qkv_bias"))
  qwen3.read_windows(r, section, section["num_layers"], types_required=True)
  qwen3_moe.read_experts(r, section)
  shared = int(r.required("shared_expert_intermediate_size"))
  section.update(shared_expert_intermediate_size=shared, shared_expert_gate=shared > 0)


def write(cfg, hf: dict) -> None:
  hf["qkv_bias"] = cfg.attention_bias
  qwen3.write_windows(cfg, hf)
  qwen3_moe.write_experts(cfg, hf)
  hf["shared_expert_intermediate_size"] = cfg.shared_expert_intermediate_size


FAMILY = Family(
    name="qwen2_moe",
    architecture="Qwen2MoeForCausalLM",
    hf_defaults=dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                     sliding_window=4096, max_window_layers=28, decoder_sparse_step=1, norm_topk_prob=False,
                     mlp_only_layers=[], qkv_bias=True),
    weights=t.WeightTable(t.TOP, t.ATTENTION + t.DENSE_MLP + t.QWEN_MOE + SHARED_EXPERT, t.COMMON_IGNORE),
    read=read,
    write=write,
    moe=True,
    example=dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=40,
                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                 num_experts_per_tok=2, mlp_only_layers=[0], norm_topk_prob=False),
)
