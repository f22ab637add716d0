"""The `model.vision` section and vision-language config.json reading: bad values and
unconvertible fields are errors that name the key (nested keys by their full path)."""

from __future__ import annotations

import json

import pytest

from tests.models import hf_vlm as H

import jaxtrain
from jaxtrain.config import ConfigError
from jaxtrain.converters import ConversionError, from_hf
from jaxtrain.models.config import ModelConfig


def qwen_section(**changes):
  base = {"arch": "qwen3_vl", "vocab_size": 128, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
          "num_kv_heads": 2, "head_dim": 8, "num_experts": 0, "mrope_section": (2, 1, 1),
          "vision": {"tower": "rope_vit", "hidden_size": 16, "num_heads": 2, "intermediate_size": 32, "patch_size": 4,
                     "num_position_embeddings": 16, "deepstack_layers": (0,), "image_token_id": 120,
                     "video_token_id": 121}}
  vision = changes.pop("vision", {})
  base.update(changes)
  base["vision"] = {**base["vision"], **vision}
  return {"model": base}


@pytest.mark.parametrize("change,key", [
    (dict(vision={"hiden_size": 16}), "Did you mean 'hidden_size'"),
    (dict(vision={"tower": "siglip"}), "model.vision.tower"),
    (dict(vision={"deepstack_layers": (5,)}), "model.vision.deepstack_layers"),
    (dict(vision={"image_token_id": 500}), "model.vision.image_token_id"),
    (dict(vision={"row_capacity": 6}), "model.vision.row_capacity"),
    (dict(vision={"num_heads": 8}), "model.vision.num_heads"),  # head_dim 2: no 2D rotary halves
    (dict(mrope_section=()), "model.mrope_section"),
    (dict(freeze=("vision", "decoder")), "model.freeze"),
])
def test_vision_section_errors_name_the_key(change, key):
  with pytest.raises(ConfigError, match=key):
    jaxtrain.load_config(base=qwen_section(**change))


def test_text_model_cannot_freeze_a_vision_tower():
  with pytest.raises(ConfigError, match="need a vision tower"):
    jaxtrain.load_config(base={"model": {"freeze": ("vision",)}})


def _config(family, **changes):
  import transformers
  return json.loads(transformers.AutoConfig.for_model(family, **H.example(family, **changes)).to_json_string())


@pytest.mark.parametrize("family,changes,key", [
    ("internvl", dict(vision_feature_layer=-2), "vision_feature_layer=-2"),
    ("internvl", dict(vision_config={"hidden_dropout_prob": 0.1}), "vision_config.hidden_dropout_prob=0.1"),
    ("internvl", dict(vision_config={"image_size": [16, 32]}), "vision_config.image_size"),
    ("internvl", dict(downsample_ratio=0.3), "downsample_ratio=0.3"),
    ("qwen3_vl", dict(vision_config={"out_hidden_size": 48}), "vision_config.out_hidden_size=48"),
    ("qwen3_vl", dict(text_config={"attention_dropout": 0.1}), "text_config.attention_dropout=0.1"),
])
def test_unconvertible_configs_name_the_field(family, changes, key):
  with pytest.raises(ConversionError, match=key.replace("[", r"\[")):
    from_hf(_config(family, **changes))


def test_unsupported_language_model_is_named():
  hf = _config("internvl")
  hf["text_config"]["model_type"] = "qwen2"
  with pytest.raises(ConversionError, match="text_config.model_type 'qwen2' is not supported for internvl"):
    from_hf(hf)


def test_round_trip_keeps_the_vision_section():
  for family in ("qwen3_vl", "qwen3_vl_moe", "internvl"):
    cfg = ModelConfig.from_config(from_hf(_config(family)))
    assert cfg.vision.enabled and cfg.arch == family
    assert cfg.vision.image_token_id == H.example(family)["image_token_id"]
  cfg = ModelConfig.from_config(from_hf(_config("qwen3_vl")))
  assert cfg.mrope_section == (2, 1, 1) and cfg.vision.deepstack_layers == (0, 2)
  assert cfg.stages()[0][0][0].inject and not cfg.stages()[-1][0][0].inject


def test_init_from_checks_the_vision_tower(tmp_path):
  """model.init_from fills the vision section from the HF directory; a field set differently is
  an error naming it."""
  hf_dir = str(tmp_path / "hf")
  H.build_hf_vlm("internvl", hf_dir, text_config={"vocab_size": 272})
  resolved = jaxtrain.load_config(base={"model": {"init_from": hf_dir, "vision": {"remat": "full"}}})
  assert resolved.model.vision.tower == "cls_vit" and resolved.model.vision.remat == "full"
  with pytest.raises(ConfigError, match="model.vision.hidden_size"):
    jaxtrain.load_config(base={"model": {"init_from": hf_dir, "vision": {"hidden_size": 32}}})
