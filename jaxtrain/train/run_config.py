"""The run config: every subsystem's section assembled into one schema, loaded from a config
file and overrides, with `model.init_from`'s architecture resolved.

    config = load_config("configs/quickstart.py", overrides=["--config.train.steps=50"])

(also `jaxtrain.load_config`). Sections: `model` and `kernels` (models/config.py), `data`
(data/config.py), `mesh` (parallel/mesh.py), `train`, `eval`, `checkpoint`, `sample`,
`logging` (train/config.py), `lora` and `preference` (posttrain/config.py), `grpo`
(posttrain/grpo_config.py), plus `workdir` and `seed`.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ml_collections import ConfigDict

from jaxtrain import config as config_lib
from jaxtrain.converters.resolve import resolve_model_section
from jaxtrain.data import config as data_config
from jaxtrain.models import config as model_config
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.posttrain import config as posttrain_config
from jaxtrain.posttrain import grpo_config
from jaxtrain.train import config as train_config


def defaults() -> ConfigDict:
  c = ConfigDict()
  c.workdir = "runs/default"  # where the run writes metrics, TensorBoard events, config.json, checkpoints
  c.seed = 0  # parameter initialisation, data order (data.seed = -1) and sampling
  c.model = model_config.defaults()
  c.kernels = model_config.kernels_defaults()
  c.data = data_config.defaults()
  c.train = train_config.defaults()
  c.eval = train_config.eval_defaults()
  c.checkpoint = train_config.checkpoint_defaults()
  c.mesh = mesh_lib.defaults()
  c.sample = train_config.sample_defaults()
  c.lora = posttrain_config.lora_defaults()
  c.preference = posttrain_config.preference_defaults()
  c.grpo = grpo_config.defaults()
  c.logging = train_config.logging_defaults()
  return c


SCHEMA = config_lib.Schema(
    defaults=defaults, open_maps={**data_config.OPEN_MAPS, **grpo_config.OPEN_MAPS},
    validators=(model_config.validate, data_config.validate, train_config.validate, mesh_lib.validate,
                posttrain_config.validate, grpo_config.validate))


def load_config(path: str | None = None, overrides: Iterable[str] = (), *, base: Any = None,
                init_from_must_exist: bool = True) -> ConfigDict:
  """Defaults <- config file <- overrides, validated and locked.

  `base` may be a dict / ConfigDict used instead of (or before) the file, for the Python API.
  With `model.init_from` set, architecture fields left at their defaults are taken from that
  HF directory or checkpoint (fields set explicitly must agree with it).
  """
  config = SCHEMA.build(path, overrides, base=base)
  if config.model.init_from:
    resolve_model_section(config, missing_ok=not init_from_must_exist)
  SCHEMA.validate(config)
  config.lock()
  return config


def validate(config: ConfigDict) -> None:
  SCHEMA.validate(config)


def from_json(text: str) -> ConfigDict:
  """Loads a resolved config written by `config_lib.to_json` (validated against today's
  defaults). Its architecture is already complete, so a since-deleted `model.init_from` is no
  error."""
  return load_config(base=json.loads(text), init_from_must_exist=False)
