"""What a model family is to the converters: one `Family` value per module under
`converters/families/`, registered in `converters/families/__init__.py`."""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxtrain.converters.hf_fields import HfReader
from jaxtrain.converters.tables import WeightTable


@dataclasses.dataclass(frozen=True)
class Family:
  """One Hugging Face `model_type`: its config.json mapping both ways, its weight table, the
  defaults of its transformers config class, and a tiny example config.

  `read(r, section)` fills the family's own fields of the `model` section from the HfReader
  (the fields every family shares are already there); `write(cfg, hf)` adds the family's own
  keys to the config.json being generated from a ModelConfig. The registry test builds
  `example` with transformers and checks both directions, the weights and the logits."""
  name: str  # the HF model_type
  architecture: str  # HF `architectures[0]` of the causal-LM class
  hf_defaults: dict  # transformers' defaults for the optional fields read here (checked by a test)
  weights: WeightTable
  read: Callable[[HfReader, dict], None]
  write: Callable[[object, dict], None]
  example: dict  # transformers config kwargs of a tiny model with random weights (tests; {} for nested text families)
  moe: bool = False  # MoE fields are read at all (dense families leave them neutral)
  kv_heads_optional: bool = False  # a missing num_key_value_heads means num_attention_heads
  aliases: tuple[str, ...] = ()  # other model_types that name the same architecture
  quantization: tuple[str, ...] = ()  # storage formats import dequantizes (converters/dequant.py)
  default_rope: dict | None = None  # rope_parameters transformers assumes when config.json has none
  rope_keys: tuple[str, ...] = ()  # extra rope_parameters keys `read` handles itself (e.g. mrope_section)
  # Vision-language families: config.json nests the language model in `text_config`, read by
  # one of `text_families` (matched by its model_type; `read` gets the top level and reads
  # `vision_config` with `r.nested`, whose transformers defaults are `vision_defaults`).
  text_families: tuple["Family", ...] = ()
  vision_defaults: dict = dataclasses.field(default_factory=dict)
  auto_class: str = "AutoModelForCausalLM"  # the transformers auto class that loads an export

  @property
  def multimodal(self) -> bool:
    return bool(self.text_families)
