"""The family registry: every Hugging Face model family jaxtrain converts, one module each.

To add a family, write `converters/families/<model_type>.py` defining `FAMILY` (see
`converters/family.py`: config mapping both ways, weight table, transformers defaults, a tiny
example) and add its module name to `REGISTERED` below. tests/converters/test_registry.py then
checks it against transformers: defaults, config round trip, weights round trip, logits.
"""

from __future__ import annotations

import importlib

from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.family import Family

# The registry: one line per family module of this package, in the order users see them.
REGISTERED = (
    "qwen3",
    "qwen3_moe",
    "llama",
    "mixtral",
    "qwen2_moe",
    "deepseek_v3",
    "gpt_oss",
    "qwen3_vl",  # vision-language
    "qwen3_vl_moe",
    "internvl",
)
FAMILIES: dict[str, Family] = {
    f.name: f for f in (importlib.import_module(f"{__name__}.{module}").FAMILY for module in REGISTERED)}
ALIASES: dict[str, str] = {alias: f.name for f in FAMILIES.values() for alias in f.aliases}


def get(model_type: str, *, source: str = "config.json") -> Family:
  """The family of a config.json `model_type` (aliases included); ConversionError naming the
  supported ones otherwise."""
  family = FAMILIES.get(ALIASES.get(model_type, model_type))
  if family is None:
    raise ConversionError(f"{source}: model_type {model_type!r} is not supported (supported: "
                          f"{', '.join(list(FAMILIES) + list(ALIASES))})")
  return family


__all__ = ["ALIASES", "FAMILIES", "Family", "get"]
