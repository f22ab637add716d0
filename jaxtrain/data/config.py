"""The `data` config section (owned by the data pipeline)."""

from __future__ import annotations

from ml_collections import ConfigDict


def source_defaults() -> ConfigDict:
  return ConfigDict({
      "kind": "python_stdlib",  # where documents come from
      "path": "",
      "format": "text",
      "weight": 1.0,
  })


# Dotted config paths whose children are user-named entries (validated against a template).
OPEN_MAPS = {"data.sources": source_defaults}


def defaults() -> ConfigDict:
  return ConfigDict({
      "seq_len": 256,
      "tokenizer": "byte",  # "byte" or a local Hugging Face tokenizer directory
      "sources": {"main": source_defaults()},
  })


def validate(config: ConfigDict) -> None:
  from jaxtrain.config import require

  require(config.data.seq_len >= 2, "data.seq_len", f"must be >= 2, got {config.data.seq_len}")
