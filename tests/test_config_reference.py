"""docs/config-reference.md is generated from the defaults and the comments beside them: every key
has a meaning, and the committed page is what the code generates today."""

from __future__ import annotations

import os

import jaxtrain
from jaxtrain import config_reference
from tests.helpers import REPO

PAGE = os.path.join(REPO, "docs", "config-reference.md")


def _keys(config, prefix=""):
  for key in config.keys():
    value = config[key]
    if hasattr(value, "keys"):
      if f"{prefix}{key}" == "data.sources":
        yield from (f"data.sources.NAME.{k}" for k in value["main"].keys())
      else:
        yield from _keys(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def test_every_key_has_a_meaning_from_the_comment_beside_its_default():
  assert config_reference.missing() == [], "add a one-line comment beside these defaults"
  rows = {e["key"]: e for e in config_reference.entries()}
  assert set(rows) == set(_keys(jaxtrain.defaults()))
  assert rows["train.clip_norm"]["meaning"] == "global-norm clipping; 0 disables"
  assert rows["mesh.fsdp"]["default"] == -1 and "ZeRO-3" in rows["mesh.fsdp"]["meaning"]
  assert "rows of the embedding" in rows["model.vocab_size"]["meaning"]  # a dataclass field's comment
  assert rows["data.sources.NAME.kind"]["meaning"].startswith("python_stdlib:")  # the block above the key


def test_the_committed_page_is_up_to_date():
  with open(PAGE, encoding="utf-8") as f:
    committed = f.read()
  assert committed == config_reference.render(), (
      "docs/config-reference.md is stale: python -m jaxtrain.config_reference --write docs/config-reference.md")
