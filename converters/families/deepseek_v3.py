"""DeepSeek-V3 / Kimi-K2: multi-head latent attention, sigmoid group-limited routing with a
score-correction bias (non-trainable model state) and shared experts, the first
`first_k_dense_replace` layers dense. Multi-token-prediction layers (`num_nextn_predict_layers`)
are not part of the forward pass; import skips their weights (see load.py)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import ALL, EXPERT, L, Rule

MLA_ATTENTION = (
    Rule(L + "input_layernorm.weight", "input_norm/scale"),
    Rule(L + "self_attn.q_proj.weight", "attn/q_proj", "t1", when="q_full"),
    Rule(L + "self_attn.q_a_proj.weight", "attn/q_a_proj", "t1", when="q_lora"),
    Rule(L + "self_attn.q_a_proj.bias", "attn/q_a_bias", when="q_lora_bias"),
    Rule(L + "self_attn.q_a_layernorm.weight", "attn/q_a_norm/scale", when="q_lora"),
    Rule(L + "self_attn.q_b_proj.weight", "attn/q_b_proj", "t1", when="q_lora"),
    Rule(L + "self_attn.kv_a_proj_with_mqa.weight", "attn/kv_a_proj", "t1"),
    Rule(L + "self_attn.kv_a_proj_with_mqa.bias", "attn/kv_a_bias", when="attention_bias"),
    Rule(L + "self_attn.kv_a_layernorm.weight", "attn/kv_a_norm/scale"),
    Rule(L + "self_attn.kv_b_proj.weight", "attn/kv_b_proj", "t1"),
    Rule(L + "self_attn.o_proj.weight", "attn/o_proj", "t2"),
    Rule(L + "self_attn.o_proj.bias", "attn/o_bias", when="attention_out_bias"),
    Rule(L + "post_attention_layernorm.weight", "post_attn_norm/scale"),
)
MOE = (
    Rule(L + "mlp.gate.weight", "moe/router", "t1", when="moe"),
    Rule(L + "mlp.gate.e_score_correction_bias", "moe/score_bias", when="moe"),
    Rule(L + "mlp.experts.{expert}.gate_proj.weight", "moe/gate_up", "t1", (EXPERT, ALL, 0, ALL), when="moe"),
    Rule(L + "mlp.experts.{expert}.up_proj.weight", "moe/gate_up", "t1", (EXPERT, ALL, 1, ALL), when="moe"),
    Rule(L + "mlp.experts.{expert}.down_proj.weight", "moe/down", "t1", (EXPERT,), when="moe"),
    Rule(L + "mlp.shared_experts.gate_proj.weight", "moe/shared/gate_up", "t1", (ALL, 0, ALL), when="shared_expert"),
    Rule(L + "mlp.shared_experts.up_proj.weight", "moe/shared/gate_up", "t1", (ALL, 1, ALL), when="shared_expert"),
    Rule(L + "mlp.shared_experts.down_proj.weight", "moe/shared/down", "t1", when="shared_expert"),
)


def read(r: f.HfReader, section: dict) -> None:
  hf = r.hf
  heads = section["num_heads"]
  if section["num_kv_heads"] != heads:
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

  num = r.first("n_routed_experts", "num_local_experts")
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
  r.used.update({"num_nextn_predict_layers", "num_mtp_layers", "qk_head_dim", "head_dim"})
  if num and section["n_group"] and num % section["n_group"]:
    r.unsupported("n_group", f"must divide n_routed_experts={num}")


def write(cfg, hf: dict) -> None:
  inter = cfg.moe_intermediate_size or 1
  hf.update(num_key_value_heads=cfg.num_heads, head_dim=cfg.qk_rope_head_dim, q_lora_rank=cfg.q_lora_rank or None,
            kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, rope_interleave=cfg.rope_interleave,
            attention_bias=cfg.attention_bias, n_routed_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
            n_shared_experts=cfg.shared_expert_intermediate_size // inter, first_k_dense_replace=cfg.first_k_dense,
            n_group=cfg.n_group, topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
            norm_topk_prob=cfg.norm_topk_prob, num_nextn_predict_layers=0, output_router_logits=False)


FAMILY = Family(
    name="deepseek_v3",
    architecture="DeepseekV3ForCausalLM",
    hf_defaults=dict(rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, hidden_act="silu",
                     tie_word_embeddings=False, max_position_embeddings=4096, intermediate_size=18432,
                     moe_intermediate_size=2048, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5,
                     kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
                     n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True,
                     rope_interleave=True, num_key_value_heads=128),
    weights=t.WeightTable(t.TOP, MLA_ATTENTION + t.DENSE_MLP + MOE, t.COMMON_IGNORE),
    read=read,
    write=write,
    moe=True,
    kv_heads_optional=True,
    aliases=("kimi_k2",),  # Kimi-K2 releases name themselves kimi_k2 and run DeepseekV3ForCausalLM
    quantization=("fp8",),
    example=dict(hidden_size=32, intermediate_size=40, moe_intermediate_size=16, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8,
                 qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
                 n_shared_experts=1, first_k_dense_replace=1, rope_interleave=True,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0,
                                  "mscale_all_dim": 0.707, "original_max_position_embeddings": 32, "beta_fast": 32.0,
                                  "beta_slow": 1.0}),
)
