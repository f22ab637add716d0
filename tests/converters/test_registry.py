"""Every registered family (converters/families/) against transformers, from its own tiny
example: the transformers config class defaults it assumes, config.json both ways, logits and
loss of random weights, and a bit-exact weight round trip that transformers reloads. A family
is covered here the moment it is registered."""

from __future__ import annotations

import json

import pytest

from tests.converters.conftest import (assert_export_is_exact_and_reloads, assert_logits_and_loss_match, build_hf,
                                       hf_config, tokens)
from tests.models import hf_vlm

import jaxtrain
from jaxtrain.converters import from_hf, save_hf, to_hf
from jaxtrain.converters.families import FAMILIES
from jaxtrain.converters.signature import signature_diff
from jaxtrain.models.config import ModelConfig


def test_registry_lists_every_family_module():
  import pkgutil

  import jaxtrain.converters.families as pkg
  modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
  assert modules == set(FAMILIES), "a module under converters/families/ is not registered (or vice versa)"
  for name, family in FAMILIES.items():
    assert family.name == name and family.example, name


def _check_defaults(name, cls, defaults):
  for key, ours in defaults.items():
    theirs = getattr(cls, "default_theta", 10000.0) if key == "rope_theta" else getattr(cls, key, None)
    if key == "mlp_only_layers" and theirs is None:
      theirs = []  # __post_init__ turns None into []
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
      theirs, ours = list(theirs), list(ours)
    assert ours == theirs, (name, key, ours, theirs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_defaults_match_transformers(family):
  """The defaults each family assumes are transformers' own: the top-level config class's and,
  for vision-language families, those of the nested vision and text config classes."""
  import transformers
  fam = FAMILIES[family]
  cls = type(transformers.AutoConfig.for_model(family))
  _check_defaults(family, cls, fam.hf_defaults)
  if fam.multimodal:
    vision_cls = type(transformers.AutoConfig.for_model(family).vision_config)
    _check_defaults(f"{family} vision_config", vision_cls, fam.vision_defaults)
    for text in fam.text_families:
      _check_defaults(f"{family} text_config {text.name}", type(transformers.AutoConfig.for_model(text.name)),
                      text.hf_defaults)


def example_config(family):
  if FAMILIES[family].multimodal:
    import transformers
    return transformers.AutoConfig.for_model(family, **hf_vlm.example(family))
  return hf_config(family, **FAMILIES[family].example)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_config_round_trips(family, tmp_path):
  """transformers' config.json -> model section -> our config.json -> transformers -> model
  section describes the same numerics; transformers builds the same architecture from ours."""
  import transformers
  original = example_config(family)
  original.save_pretrained(str(tmp_path / "a"))
  cfg = ModelConfig.from_config(from_hf(json.loads((tmp_path / "a" / "config.json").read_text())))
  assert cfg.arch == family
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "config.json").write_text(json.dumps(to_hf(cfg)))
  reread = transformers.AutoConfig.from_pretrained(str(tmp_path / "b"))
  assert type(reread) is type(original)
  reread.save_pretrained(str(tmp_path / "c"))
  back = ModelConfig.from_config(from_hf(json.loads((tmp_path / "c" / "config.json").read_text())))
  assert not signature_diff(cfg, back)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_logits_and_weights_round_trip(family, tmp_path):
  """Text-only logits and loss (vision-language families: their language model and its
  positions; tests/models/test_vlm.py covers pixels), and a bit-exact export that the
  family's transformers auto class reloads."""
  hf_dir, out = str(tmp_path / "hf"), str(tmp_path / "out")
  if FAMILIES[family].multimodal:
    hf_model = hf_vlm.build_hf_vlm(family, hf_dir, seed=7)
  else:
    hf_model = build_hf(family, hf_dir, seed=7, **FAMILIES[family].example)
  model = jaxtrain.from_pretrained(hf_dir)
  assert_logits_and_loss_match(f"registry {family}", model, hf_model, tokens(2, 17, seed=3))
  save_hf(model, model.cfg, out, base_config=json.loads(open(f"{hf_dir}/config.json").read()))
  assert_export_is_exact_and_reloads(hf_dir, out, hf_model, auto_class=FAMILIES[family].auto_class)
