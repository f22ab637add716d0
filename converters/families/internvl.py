"""InternVL (the transformers `internvl` layout, also Intern-S1's): the cls_vit tower
(InternViT: class token, learned positions, layer-scaled pre-norm blocks, optional q/k
RMSNorm), pixel shuffle by 1 / downsample_ratio, an MLP projector, and a Qwen3 or Qwen3-MoE
language model (`text_config`, read by those families)."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.families import qwen3, qwen3_moe
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import Rule, Stack

# transformers' InternVLVisionConfig defaults of the fields read here.
VISION_DEFAULTS = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, attention_bias=False,
                       use_qk_norm=False, intermediate_size=4096, hidden_act="gelu", hidden_dropout_prob=0.0,
                       attention_dropout=0.0, projection_dropout=0.0, norm_type="layer_norm", layer_norm_eps=1e-6,
                       image_size=(448, 448), patch_size=(14, 14), num_channels=3, use_mask_token=False,
                       use_absolute_position_embeddings=True, use_mean_pooling=True)
TOP_DEFAULTS = dict(image_token_id=151667, downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
                    vision_feature_select_strategy="default", tie_word_embeddings=True)


def _square(r: f.HfReader, key: str) -> int:
  value = r.get(key)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      r.unsupported(key, "only square images and patches are supported")
    value = value[0]
  return int(value)


def read(r: f.HfReader, section: dict) -> None:
  v = r.nested("vision_config", VISION_DEFAULTS)
  v.used.update({"model_type", "initializer_range", "layer_scale_init_value", "use_mask_token"})
  for key in ("hidden_dropout_prob", "attention_dropout", "projection_dropout"):
    if float(v.get(key) or 0.0) > 0:
      v.unsupported(key, "dropout is not implemented; set it to 0.0 to train without it")
  if not v.get("use_absolute_position_embeddings"):
    v.unsupported("use_absolute_position_embeddings", "a tower without position embeddings is not supported")
  if v.get("norm_type") not in ("layer_norm", "rms_norm"):
    v.unsupported("norm_type", "must be layer_norm or rms_norm")
  act, proj_act = v.get("hidden_act"), r.get("projector_hidden_act")
  for reader, key, value in ((v, "hidden_act", act), (r, "projector_hidden_act", proj_act)):
    if value not in f.ACTIVATIONS_IN:
      reader.unsupported(key, f"activation not supported (supported: {sorted(f.ACTIVATIONS_IN)})")
  if r.get("vision_feature_layer") != -1:
    r.unsupported("vision_feature_layer", "only the last layer's features (-1) are supported")
  if r.get("vision_feature_select_strategy") != "default":
    r.unsupported("vision_feature_select_strategy", "only 'default' (drop the class token) is supported")
  ratio = float(r.get("downsample_ratio"))
  merge = round(1 / ratio) if ratio > 0 else 0
  if merge < 1 or abs(merge * ratio - 1) > 1e-6:
    r.unsupported("downsample_ratio", "must be 1 / an integer")
  r.used.add("image_seq_length")  # the processor's token count per tile
  section["vision"] = dict(
      tower="cls_vit", hidden_size=int(v.required("hidden_size")), num_layers=int(v.required("num_hidden_layers")),
      num_heads=int(v.required("num_attention_heads")), intermediate_size=int(v.required("intermediate_size")),
      activation=f.ACTIVATIONS_IN.get(act, "gelu"), norm=v.get("norm_type"), norm_eps=float(v.get("layer_norm_eps")),
      in_channels=int(v.get("num_channels")), patch_size=_square(v, "patch_size"),
      image_size=_square(v, "image_size"), spatial_merge_size=max(merge, 1), qkv_bias=bool(v.get("attention_bias")),
      qk_norm=bool(v.get("use_qk_norm")), final_norm=not v.get("use_mean_pooling"),
      projector_activation=f.ACTIVATIONS_IN.get(proj_act, "gelu"), projector_norm_eps=1e-5,
      image_token_id=int(r.get("image_token_id")))


def write(cfg, hf: dict) -> None:
  v = cfg.vision
  hf.update(image_token_id=v.image_token_id, downsample_ratio=1 / v.spatial_merge_size,
            projector_hidden_act=f.ACTIVATIONS_OUT[v.projector_activation], vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            image_seq_length=v.tokens_per_tile)
  hf["vision_config"] = dict(
      model_type="internvl_vision", hidden_size=v.hidden_size, num_hidden_layers=v.num_layers,
      num_attention_heads=v.num_heads, intermediate_size=v.intermediate_size,
      hidden_act=f.ACTIVATIONS_OUT[v.activation], norm_type=v.norm, layer_norm_eps=v.norm_eps,
      num_channels=v.in_channels, patch_size=[v.patch_size, v.patch_size], image_size=[v.image_size, v.image_size],
      attention_bias=v.qkv_bias, use_qk_norm=v.qk_norm, use_mean_pooling=not v.final_norm,
      use_absolute_position_embeddings=True, initializer_range=cfg.initializer_range)


# The keys transformers writes (its "llava" on-disk names, also the Hub's -hf checkpoints).
V = "vision_tower."
B = V + "encoder.layer.{layer}."
P = "multi_modal_projector."
VISION = (
    Rule(V + "embeddings.cls_token", "vision/cls_token"),
    Rule(V + "embeddings.position_embeddings", "vision/pos_embed"),
    Rule(V + "embeddings.patch_embeddings.projection.weight", "vision/patch_embed", "conv"),
    Rule(V + "embeddings.patch_embeddings.projection.bias", "vision/patch_bias"),
    Rule(V + "layernorm.weight", "vision/final_norm/scale", when="vit_final_norm"),
    Rule(V + "layernorm.bias", "vision/final_norm/bias", when="vit_final_norm"),
    Rule(P + "layer_norm.weight", "projector/norm/scale"),
    Rule(P + "layer_norm.bias", "projector/norm/bias"),
    Rule(P + "linear_1.weight", "projector/fc1/w", "t1"),
    Rule(P + "linear_1.bias", "projector/fc1/b"),
    Rule(P + "linear_2.weight", "projector/fc2/w", "t1"),
    Rule(P + "linear_2.bias", "projector/fc2/b"),
)
BLOCK = (
    Rule(B + "layernorm_before.weight", "norm_before/scale"),
    Rule(B + "layernorm_before.bias", "norm_before/bias", when="vit_norm_bias"),
    Rule(B + "attention.q_proj.weight", "q/w", "t1"),
    Rule(B + "attention.q_proj.bias", "q/b", when="vit_qkv_bias"),
    Rule(B + "attention.k_proj.weight", "k/w", "t1"),
    Rule(B + "attention.k_proj.bias", "k/b", when="vit_qkv_bias"),
    Rule(B + "attention.v_proj.weight", "v/w", "t1"),
    Rule(B + "attention.v_proj.bias", "v/b", when="vit_qkv_bias"),
    Rule(B + "attention.q_norm.weight", "q_norm/scale", when="vit_qk_norm"),
    Rule(B + "attention.k_norm.weight", "k_norm/scale", when="vit_qk_norm"),
    Rule(B + "attention.projection_layer.weight", "proj/w", "t1"),
    Rule(B + "attention.projection_layer.bias", "proj/b"),
    Rule(B + "lambda_1", "scale_attn"),
    Rule(B + "layernorm_after.weight", "norm_after/scale"),
    Rule(B + "layernorm_after.bias", "norm_after/bias", when="vit_norm_bias"),
    Rule(B + "mlp.fc1.weight", "fc1/w", "t1"),
    Rule(B + "mlp.fc1.bias", "fc1/b"),
    Rule(B + "mlp.fc2.weight", "fc2/w", "t1"),
    Rule(B + "mlp.fc2.bias", "fc2/b"),
    Rule(B + "lambda_2", "scale_mlp"),
)


def language_model(rules):
  rules = t.reprefix(rules, "model.", "language_model.model.")
  return t.reprefix(rules, "lm_head.", "language_model.lm_head.")


FAMILY = Family(
    name="internvl",
    architecture="InternVLForConditionalGeneration",
    hf_defaults=TOP_DEFAULTS,
    weights=t.WeightTable(language_model(t.TOP), language_model(t.ATTENTION + t.DENSE_MLP + t.QWEN_MOE),
                          t.COMMON_IGNORE + (r"vision_tower\.embeddings\.mask_token",), vision=VISION,
                          stacks=(Stack("vision/blocks", lambda cfg: cfg.vision.num_layers, BLOCK),)),
    read=read,
    write=write,
    moe=True,
    text_families=(qwen3.FAMILY, qwen3_moe.FAMILY),
    vision_defaults=VISION_DEFAULTS,
    auto_class="AutoModelForImageTextToText",
    example=dict(
        text_config=dict(model_type="qwen3_moe", hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
                         num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=128),
        vision_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                           image_size=[16, 16], patch_size=[4, 4], attention_bias=True, use_qk_norm=True,
                           use_mean_pooling=False, norm_type="rms_norm"),
        image_token_id=100, tie_word_embeddings=False),
)
