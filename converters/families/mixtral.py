"""Mixtral: plain GQA attention with an optional sliding window on every layer, softmax-top-k
experts on every layer (`intermediate_size` is the expert width)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import ALL, EXPERT, L, Rule

MOE = (
    Rule(L + "block_sparse_moe.gate.weight", "moe/router", "t1", when="moe"),
    Rule(L + "block_sparse_moe.experts.{expert}.w1.weight", "moe/gate_up", "t1", (EXPERT, ALL, 0, ALL), when="moe"),
    Rule(L + "block_sparse_moe.experts.{expert}.w3.weight", "moe/gate_up", "t1", (EXPERT, ALL, 1, ALL), when="moe"),
    Rule(L + "block_sparse_moe.experts.{expert}.w2.weight", "moe/down", "t1", (EXPERT,), when="moe"),
)


def read(r: f.HfReader, section: dict) -> None:
  if r.get("sliding_window"):
    section["sliding_window"] = int(r.get("sliding_window"))
  num = r.first("num_local_experts", "num_experts")
  if num is None:
    r.problems.append(r.prefix + "num_local_experts: required field is missing")
    num = 0
  section.update(num_experts=int(num), num_experts_per_tok=int(r.required("num_experts_per_tok")),
                 moe_intermediate_size=section["intermediate_size"], norm_topk_prob=True)


def write(cfg, hf: dict) -> None:
  hf.update(sliding_window=max(f.layer_windows(cfg)) or None, intermediate_size=cfg.moe_intermediate_size,
            num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok, router_jitter_noise=0.0,
            router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)


FAMILY = Family(
    name="mixtral",
    architecture="MixtralForCausalLM",
    hf_defaults=dict(head_dim=None, rms_norm_eps=1e-5, rope_theta=1000000.0, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=4096 * 32, sliding_window=None),
    weights=t.WeightTable(t.TOP, t.ATTENTION + MOE, t.COMMON_IGNORE),
    read=read,
    write=write,
    moe=True,
    example=dict(hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=7, rope_theta=1e6),
)
