"""Qwen3-VL-MoE: Qwen3-VL (qwen3_vl.py) with Qwen3-MoE feed-forward layers in the language
model (`text_config`, model_type qwen3_vl_moe_text): softmax-top-k routing, always
renormalised, with each layer's experts stored fused: `gate_up_proj` [experts,
2 x moe_intermediate (gate then up), hidden] and `down_proj` [experts, hidden, moe_intermediate]
as transformers saves them, or each transposed in its last two dims as the original releases
store them (import reads either; export writes transformers' layout)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.families import qwen3_vl
from jaxtrain.converters.families.qwen3_moe import read_experts, write_experts
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import Rule

L = qwen3_vl.LM + "layers.{layer}."
FUSED_MOE = (
    Rule(L + "mlp.gate.weight", "moe/router", "t1", when="moe"),
    Rule(L + "mlp.experts.gate_up_proj", "moe/gate_up", "xt1", when="moe", alt="halves"),
    Rule(L + "mlp.experts.down_proj", "moe/down", "xt1", when="moe", alt="same"),
)


def read_text(r: f.HfReader, section: dict) -> None:
  qwen3_vl.read_text(r, section)
  read_experts(r, section)
  section["norm_topk_prob"] = True  # Qwen3-VL-MoE's router always renormalises the top k


def write_text(cfg, hf: dict) -> None:
  qwen3_vl.write_text(cfg, hf)
  write_experts(cfg, hf)
  del hf["norm_topk_prob"]


TEXT = Family(
    name="qwen3_vl_moe_text",
    architecture="",
    hf_defaults=dict(head_dim=None, rms_norm_eps=1e-6, rope_theta=500000.0, attention_bias=False, hidden_act="silu",
                     max_position_embeddings=128000, decoder_sparse_step=1, mlp_only_layers=[]),
    weights=t.WeightTable((), ()),
    read=read_text,
    write=write_text,
    example={},
    moe=True,
    rope_keys=("mrope_section", "mrope_interleaved"),
)

FAMILY = Family(
    name="qwen3_vl_moe",
    architecture="Qwen3VLMoeForConditionalGeneration",
    hf_defaults=qwen3_vl.TOP_DEFAULTS,
    weights=t.WeightTable(qwen3_vl.language_model(t.TOP),
                          qwen3_vl.language_model(t.ATTENTION + t.DENSE_MLP) + FUSED_MOE, t.COMMON_IGNORE,
                          vision=qwen3_vl.VISION, stacks=qwen3_vl.STACKS),
    read=qwen3_vl.read,
    write=qwen3_vl.write,
    moe=True,
    text_families=(TEXT,),
    vision_defaults=qwen3_vl.VISION_DEFAULTS,
    auto_class="AutoModelForImageTextToText",
    example=dict(
        text_config=dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=8, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                         decoder_sparse_step=1, mlp_only_layers=[1], max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16,
                           deepstack_visual_indexes=[1]),
        image_token_id=97, video_token_id=98, vision_start_token_id=99, vision_end_token_id=100),
)
