"""What determines a model's forward numerics, so two configs can be compared field by field:
`signature_diff(a, b)` lists the fields whose values would change the outputs."""

from __future__ import annotations

import dataclasses
from typing import Any


def arch_signature(cfg) -> dict[str, Any]:
  """What determines a ModelConfig's forward numerics, keyed by the config field(s) behind it."""
  from jaxtrain.models.rope import inv_frequencies
  n = cfg.num_layers
  moe = tuple(cfg.is_moe_layer(i) for i in range(n))
  inv_freq, attn_factor = inv_frequencies(cfg.rope_dim, cfg.rope_theta, cfg.rope_scaling,
                                          cfg.max_position_embeddings)
  sig: dict[str, Any] = {
      "arch": cfg.arch,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_layers": n,
      "num_heads": cfg.num_heads,
      "num_kv_heads": cfg.num_kv_heads,
      "head_dim": cfg.resolved_head_dim,
      "activation": cfg.activation,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta/rope_scaling": (tuple(float(x) for x in inv_freq), float(attn_factor)),
      "qk_norm": cfg.qk_norm,
      "attention_bias": cfg.attention_bias,
      "attention_out_bias": cfg.attention_out_bias,
      "attention_sinks": cfg.attention_sinks,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "sliding_window/layer_types": tuple(cfg.layer_window(i) for i in range(n)),
      "num_experts/decoder_sparse_step/mlp_only_layers/first_k_dense": moe,
      "attention": cfg.attention,
  }
  if cfg.mrope_section:
    sig["mrope_section"] = tuple(cfg.mrope_section)
  sig["vision.tower"] = cfg.vision.tower
  if cfg.vision.enabled:
    for f in dataclasses.fields(cfg.vision):
      if f.name not in ("tower", "remat", "row_capacity"):
        sig[f"vision.{f.name}"] = getattr(cfg.vision, f.name)
  if cfg.attention == "mla":
    from jaxtrain.models.mla import softmax_scale
    del sig["num_kv_heads"], sig["head_dim"]
    sig.update(q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
               qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, rope_interleave=cfg.rope_interleave)
    sig["rope_scaling.mscale_all_dim"] = softmax_scale(cfg)
  if not all(moe):
    sig["intermediate_size"] = cfg.intermediate_size
  if any(moe):
    sig.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
               moe_intermediate_size=cfg.moe_intermediate_size, router=cfg.router,
               shared_expert_intermediate_size=cfg.shared_expert_intermediate_size)
    if cfg.router in ("softmax_topk", "sigmoid_group"):
      sig["norm_topk_prob"] = cfg.norm_topk_prob
    if cfg.router == "sigmoid_group":
      sig.update(n_group=cfg.n_group, topk_group=cfg.topk_group)
    sig.update(routed_scaling_factor=cfg.routed_scaling_factor, expert_bias=cfg.expert_bias,
               expert_activation=cfg.expert_activation)
    if cfg.expert_activation == "clamped_swiglu":
      sig.update(swiglu_alpha=cfg.swiglu_alpha, swiglu_limit=cfg.swiglu_limit)
    if cfg.shared_expert_intermediate_size:
      sig["shared_expert_gate"] = cfg.shared_expert_gate
  return sig


def _show(key: str, value: Any, cfg) -> str:
  if key == "rope_theta/rope_scaling":
    rs = {k: v for k, v in vars(cfg.rope_scaling).items()}
    return f"rope_theta={cfg.rope_theta}, rope_scaling={rs}"
  if key.startswith("num_experts/"):
    return (f"num_experts={cfg.num_experts}, decoder_sparse_step={cfg.decoder_sparse_step}, "
            f"mlp_only_layers={list(cfg.mlp_only_layers)}, first_k_dense={cfg.first_k_dense} "
            f"(MoE layers {[i for i, m in enumerate(value) if m]})")
  if key.startswith("sliding_window/"):
    return f"sliding_window={cfg.sliding_window}, layer_types={list(cfg.layer_types)} (windows {list(value)})"
  return repr(value)


def signature_diff(a, b, *, a_name: str = "", b_name: str = "") -> list[str]:
  """Fields whose numerics differ between ModelConfigs `a` and `b` ('field: a vs b')."""
  sa, sb = arch_signature(a), arch_signature(b)
  out = []
  for key in list(dict.fromkeys(list(sa) + list(sb))):
    if sa.get(key, "<absent>") != sb.get(key, "<absent>"):
      left = _show(key, sa[key], a) if key in sa else "(not used)"
      right = _show(key, sb[key], b) if key in sb else "(not used)"
      out.append(f"model.{key}: {a_name + ' ' if a_name else ''}{left} vs {b_name + ' ' if b_name else ''}{right}")
  return out
