"""Every registered family (converters/families/) against transformers, from its own tiny
example: the transformers config class defaults it assumes, config.json both ways, logits and
loss of random weights, and a bit-exact weight round trip that transformers reloads. A family
is covered here the moment it is registered."""

from __future__ import annotations

import json

import pytest

from tests.converters.conftest import (assert_export_is_exact_and_reloads, assert_logits_and_loss_match, build_hf,
                                       hf_config, tokens)

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


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_defaults_match_transformers(family):
  import transformers
  cls = type(transformers.AutoConfig.for_model(family))
  for key, ours in FAMILIES[family].hf_defaults.items():
    theirs = getattr(cls, "default_theta", 10000.0) if key == "rope_theta" else getattr(cls, key, None)
    if key == "mlp_only_layers" and theirs is None:
      theirs = []  # __post_init__ turns None into []
    assert ours == theirs, (family, key, ours, theirs)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_config_round_trips(family, tmp_path):
  """transformers' config.json -> model section -> our config.json -> transformers -> model
  section describes the same numerics; transformers builds the same architecture from ours."""
  import transformers
  original = hf_config(family, **FAMILIES[family].example)
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
  hf_dir, out = str(tmp_path / "hf"), str(tmp_path / "out")
  hf_model = build_hf(family, hf_dir, seed=7, **FAMILIES[family].example)
  model = jaxtrain.from_pretrained(hf_dir)
  assert_logits_and_loss_match(f"registry {family}", model, hf_model, tokens(2, 17, seed=3))
  save_hf(model, model.cfg, out, base_config=json.loads(open(f"{hf_dir}/config.json").read()))
  assert_export_is_exact_and_reloads(hf_dir, out, hf_model)
