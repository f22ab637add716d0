"""Qwen3-MoE: Qwen3 attention, softmax-top-k routed experts on every `decoder_sparse_step`-th
layer except `mlp_only_layers` (dense)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family


def read_experts(r: f.HfReader, section: dict) -> None:
  """Qwen-style routed experts (also Qwen2-MoE)."""
  num = r.first("num_experts", "num_local_experts")
  if num is None:
    r.problems.append(r.prefix + "num_experts: required field is missing")
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


def write_experts(cfg, hf: dict) -> None:
  hf.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
            decoder_sparse_step=cfg.decoder_sparse_step, mlp_only_layers=f.dense_layers_out(cfg),
            router_aux_loss_coef=cfg.aux_loss_weight, output_router_logits=False)


def read(r: f.HfReader, section: dict) -> None:
  bias = bool(r.get("attention_bias"))
  section.update(qk_norm=True, attention_bias=bias, attention_out_bias=bias)
  if r.get("use_sliding_window") and r.get("sliding_window"):
    section["sliding_window"] = int(r.get("sliding_window"))
  read_experts(r, section)


def write(cfg, hf: dict) -> None:
  window = max(f.layer_windows(cfg))
  hf.update(attention_bias=cfg.attention_bias, sliding_window=window or None, use_sliding_window=bool(window))
  write_experts(cfg, hf)


FAMILY = Family(
    name="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    hf_defaults=dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=32768, use_sliding_window=False,
                     sliding_window=4096, decoder_sparse_step=1, norm_topk_prob=False, mlp_only_layers=[]),
    weights=t.WeightTable(t.TOP, t.ATTENTION + t.DENSE_MLP + t.QWEN_MOE, t.COMMON_IGNORE),
    read=read,
    write=write,
    moe=True,
    example=dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
                 decoder_sparse_step=2, mlp_only_layers=[3], norm_topk_prob=False, rope_theta=1e6),
)
