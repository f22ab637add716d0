"""Qwen3-VL (dense): a Qwen3 language model with interleaved multimodal rotary positions
(`text_config`, model_type qwen3_vl_text) and the rope_vit tower: 3D patch embedding, learned
positions resampled per image, 2D rotary attention within each frame, the patch merger and
DeepStack mergers (`vision_config`). Qwen3-VL-MoE (qwen3_vl_moe.py) shares all but the
language model's feed-forward layers."""

from __future__ import annotations

from jaxtrain.converters import hf_fields as f
from jaxtrain.converters import tables as t
from jaxtrain.converters.family import Family
from jaxtrain.converters.tables import Rule, Stack

# transformers' Qwen3VLVisionConfig defaults of the fields read here.
VISION_DEFAULTS = dict(depth=27, hidden_size=1152, hidden_act="gelu_pytorch_tanh", intermediate_size=4304, num_heads=16,
                       in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=3584,
                       num_position_embeddings=2304, deepstack_visual_indexes=(8, 16, 24))
TOP_DEFAULTS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                    vision_end_token_id=151653, tie_word_embeddings=False)
MROPE_DEFAULT = (24, 20, 20)  # what transformers uses when rope_parameters has no mrope_section


def _square(r: f.HfReader, key: str) -> int:
  value = r.get(key)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      r.unsupported(key, "non-square patches are not supported")
    value = value[0]
  return int(value)


def read_mrope(r: f.HfReader, section: dict) -> None:
  rope = r.hf.get("rope_parameters") or r.hf.get("rope_scaling") or {}
  mrope = rope.get("mrope_section", MROPE_DEFAULT) if isinstance(rope, dict) else MROPE_DEFAULT
  if not isinstance(mrope, (list, tuple)) or len(mrope) != 3:
    r.problems.append(r.prefix + f"rope_parameters.mrope_section={mrope!r}: expected three counts")
    mrope = MROPE_DEFAULT
  section["mrope_section"] = tuple(int(n) for n in mrope)


def write_mrope(cfg, hf: dict) -> None:
  """mrope_section into the rope parameters (transformers always interleaves for Qwen3-VL)."""
  for key in ("rope_parameters", "rope_scaling"):
    if hf.get(key) is not None:
      hf[key] = {**hf[key], "mrope_section": list(cfg.mrope_section), "mrope_interleaved": True}


def read_text(r: f.HfReader, section: dict) -> None:
  bias = bool(r.get("attention_bias"))
  section.update(qk_norm=True, attention_bias=bias, attention_out_bias=bias)
  read_mrope(r, section)


def write_text(cfg, hf: dict) -> None:
  hf["attention_bias"] = cfg.attention_bias
  write_mrope(cfg, hf)


def read(r: f.HfReader, section: dict) -> None:
  """The top level (placeholder token ids) and vision_config: the rope_vit tower."""
  v = r.nested("vision_config", VISION_DEFAULTS)
  act = v.get("hidden_act")
  if act not in f.ACTIVATIONS_IN:
    v.unsupported("hidden_act", f"activation not supported (supported: {sorted(f.ACTIVATIONS_IN)})")
  rope = v.get("rope_parameters") or {}
  v.used.add("model_type")
  if rope.get("rope_type", "axial") != "axial":
    v.unsupported("rope_parameters", "only axial 2D rotary positions are supported")
  if int(v.get("out_hidden_size")) != section["hidden_size"]:
    v.unsupported("out_hidden_size", f"must equal text_config.hidden_size={section['hidden_size']}")
  section["vision"] = dict(
      tower="rope_vit", hidden_size=int(v.required("hidden_size")), num_layers=int(v.required("depth")),
      num_heads=int(v.required("num_heads")), intermediate_size=int(v.required("intermediate_size")),
      activation=f.ACTIVATIONS_IN.get(act, "gelu_tanh"), norm="layer_norm", norm_eps=1e-6,
      in_channels=int(v.get("in_channels")), patch_size=_square(v, "patch_size"),
      temporal_patch_size=_square(v, "temporal_patch_size"), spatial_merge_size=int(v.get("spatial_merge_size")),
      num_position_embeddings=int(v.get("num_position_embeddings")),
      rope_theta=float(rope.get("rope_theta", 10000.0)),
      deepstack_layers=tuple(int(i) for i in v.get("deepstack_visual_indexes")), qkv_bias=True, qk_norm=False,
      final_norm=False, projector_activation="gelu",
      image_token_id=int(r.get("image_token_id")), video_token_id=int(r.get("video_token_id")))
  r.used.update({"vision_start_token_id", "vision_end_token_id"})  # the processor's, not the model's


def write(cfg, hf: dict) -> None:
  v = cfg.vision
  hf.update(image_token_id=v.image_token_id, video_token_id=v.video_token_id)
  hf["vision_config"] = dict(
      model_type=f"{cfg.arch}_vision", depth=v.num_layers, hidden_size=v.hidden_size,
      hidden_act=f.ACTIVATIONS_OUT[v.activation], intermediate_size=v.intermediate_size, num_heads=v.num_heads,
      in_channels=v.in_channels, patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
      temporal_patch_size=v.temporal_patch_size, out_hidden_size=cfg.hidden_size,
      num_position_embeddings=v.num_position_embeddings, deepstack_visual_indexes=list(v.deepstack_layers),
      rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta}, initializer_range=cfg.initializer_range)


V = "model.visual."
B = V + "blocks.{layer}."
D = V + "deepstack_merger_list.{layer}."


def merger_rules(prefix: str, path: str) -> tuple[Rule, ...]:
  return (
      Rule(prefix + "norm.weight", path + "norm/scale"),
      Rule(prefix + "norm.bias", path + "norm/bias"),
      Rule(prefix + "linear_fc1.weight", path + "fc1/w", "t1"),
      Rule(prefix + "linear_fc1.bias", path + "fc1/b"),
      Rule(prefix + "linear_fc2.weight", path + "fc2/w", "t1"),
      Rule(prefix + "linear_fc2.bias", path + "fc2/b"),
  )


VISION = (
    Rule(V + "patch_embed.proj.weight", "vision/patch_embed", "conv"),
    Rule(V + "patch_embed.proj.bias", "vision/patch_bias"),
    Rule(V + "pos_embed.weight", "vision/pos_embed"),
) + merger_rules(V + "merger.", "projector/merger/")
STACKS = (
    Stack("vision/blocks", lambda cfg: cfg.vision.num_layers, (
        Rule(B + "norm1.weight", "norm1/scale"),
        Rule(B + "norm1.bias", "norm1/bias"),
        Rule(B + "attn.qkv.weight", "qkv", "t1"),
        Rule(B + "attn.qkv.bias", "qkv_bias", "flat"),
        Rule(B + "attn.proj.weight", "proj", "t2"),
        Rule(B + "attn.proj.bias", "proj_bias"),
        Rule(B + "norm2.weight", "norm2/scale"),
        Rule(B + "norm2.bias", "norm2/bias"),
        Rule(B + "mlp.linear_fc1.weight", "fc1/w", "t1"),
        Rule(B + "mlp.linear_fc1.bias", "fc1/b"),
        Rule(B + "mlp.linear_fc2.weight", "fc2/w", "t1"),
        Rule(B + "mlp.linear_fc2.bias", "fc2/b"),
    )),
    Stack("projector/deepstack", lambda cfg: len(cfg.vision.deepstack_layers), merger_rules(D, "")),
)
LM = "model.language_model."


def language_model(rules):
  return t.reprefix(rules, "model.", LM)


TEXT = Family(
    name="qwen3_vl_text",
    architecture="",
    hf_defaults=dict(head_dim=128, rms_norm_eps=1e-6, rope_theta=500000.0, attention_bias=False, hidden_act="silu",
                     max_position_embeddings=128000),
    weights=t.WeightTable((), ()),
    read=read_text,
    write=write_text,
    example={},
    rope_keys=("mrope_section", "mrope_interleaved"),
)

FAMILY = Family(
    name="qwen3_vl",
    architecture="Qwen3VLForConditionalGeneration",
    hf_defaults=TOP_DEFAULTS,
    weights=t.WeightTable(language_model(t.TOP), language_model(t.ATTENTION + t.DENSE_MLP), t.COMMON_IGNORE,
                          vision=VISION, stacks=STACKS),
    read=read,
    write=write,
    text_families=(TEXT,),
    vision_defaults=VISION_DEFAULTS,
    auto_class="AutoModelForImageTextToText",
    example=dict(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, attention_bias=True, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=4,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 2]),
        image_token_id=97, video_token_id=98, vision_start_token_id=99, vision_end_token_id=100),
)
