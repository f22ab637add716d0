"""`model.init_from` with the architecture left at defaults: take it from the checkpoint.

`resolve_model_section(config)` fills the architecture fields of `config.model` from the HF
directory or jaxtrain checkpoint named by `model.init_from`. Fields the user changed from their
defaults are kept; training choices (dtype, param_dtype, remat, moe_impl, capacity_factor,
aux_loss_weight, z_loss_weight) are never touched. If the result would compute something
different from the checkpoint, a ConfigError names the fields.
"""

from __future__ import annotations

import os
from typing import Any

from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.hf_config import TRAINING_FIELDS, VISION_TRAINING_FIELDS
from jaxtrain.converters.load import check_config_matches, model_section

from jaxtrain import config as config_lib
from jaxtrain.config import ConfigError
from jaxtrain.models import config as model_config
from jaxtrain.models.config import ModelConfig


def _norm(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_norm(v) for v in value)
  if isinstance(value, bool):
    return value
  if isinstance(value, (int, float)):
    return float(value)
  return value


def resolve_model_section(config, *, missing_ok: bool = False):
  """Fills `config.model`'s architecture from `config.model.init_from` (in place; returns it).
  `config` holds at least the `model` and `kernels` sections."""
  path = config.model.init_from
  if not path:
    return config
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    if missing_ok:
      return config
    raise ConfigError(f"config model.init_from={path}: no such file or directory")
  try:
    source = model_section(path)
  except ConversionError as e:
    raise ConfigError(f"config model.init_from={path}: {e}") from e
  defaults = model_config.defaults().to_dict()
  current = config.model.to_dict()
  updates: dict[str, Any] = {}
  for key, value in source.items():
    if key in TRAINING_FIELDS or key not in defaults:
      continue
    if isinstance(defaults[key], dict):  # rope_scaling, vision: field by field
      skip = VISION_TRAINING_FIELDS if key == "vision" else ()
      sub = {k: v for k, v in value.items()
             if k in defaults[key] and k not in skip and _norm(current[key][k]) == _norm(defaults[key][k])
             and _norm(v) != _norm(current[key][k])}
      if sub:
        updates[key] = sub
    elif _norm(current[key]) == _norm(defaults[key]) and _norm(value) != _norm(current[key]):
      updates[key] = value
  if updates:
    config_lib.merge(config, {"model": updates}, source=f"model.init_from={path}", replace_open=False)
  model_config.validate(config)
  check_config_matches(ModelConfig.from_config(config.model, config.kernels), path)
  return config
