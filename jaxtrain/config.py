"""Run configuration: defaults, config files, dotted overrides and validation.

A config file is a Python file with `get_config()` returning an `ml_collections.ConfigDict`
(or a plain dict) that holds any subset of the defaults. Every key must exist in the defaults;
an unknown key is an error that names the key and suggests close matches. A few nodes are open
maps (for example `data.sources`): their entries are free names, each validated against a
template.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Callable, Iterable

import ml_collections
from ml_collections import ConfigDict


class ConfigError(ValueError):
  """A configuration problem, with the offending key in the message."""


def defaults() -> ConfigDict:
  # Each subsystem owns its section; imported here so `import jaxtrain.config` stays cheap.
  from jaxtrain.data import config as data_config
  from jaxtrain.models import config as model_config
  from jaxtrain.parallel import mesh as mesh_config
  from jaxtrain.train import config as train_config

  c = ConfigDict()
  c.workdir = "runs/default"
  c.seed = 0
  c.model = model_config.defaults()
  c.kernels = ConfigDict({"attention": "auto", "gmm": "auto"})
  c.data = data_config.defaults()
  c.train = train_config.defaults()
  c.eval = train_config.eval_defaults()
  c.checkpoint = train_config.checkpoint_defaults()
  c.mesh = mesh_config.defaults()
  c.sample = train_config.sample_defaults()
  return c


def _open_maps() -> dict[str, Callable[[], ConfigDict]]:
  """Dotted paths whose children are user-named entries validated against a template."""
  from jaxtrain.data import config as data_config
  return dict(data_config.OPEN_MAPS)


def _validators() -> list[Callable[[ConfigDict], None]]:
  from jaxtrain.data import config as data_config
  from jaxtrain.models import config as model_config
  from jaxtrain.parallel import mesh as mesh_config
  from jaxtrain.train import config as train_config
  return [model_config.validate, data_config.validate, train_config.validate, mesh_config.validate]


def _suggest(key: str, candidates: Iterable[str]) -> str:
  close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
  return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _unknown(path: str, key: str, known: Iterable[str], source: str) -> ConfigError:
  full = f"{path}.{key}" if path else key
  known = sorted(known)
  return ConfigError(f"{source}: unknown config key {full!r}.{_suggest(key, known)} "
                     f"Known keys under {path or 'the root'}: {', '.join(known)}")


def _as_dict(value: Any) -> Any:
  if isinstance(value, ConfigDict):
    return value.to_dict()
  return value


def _check_type(path: str, default: Any, value: Any, source: str) -> Any:
  """Coerces `value` to the default's type where that is lossless; else raises."""
  if default is None or value is None:
    return value
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif isinstance(default, str):
    if isinstance(value, str):
      return value
  elif isinstance(default, (tuple, list)):
    if isinstance(value, (tuple, list)):
      return tuple(value)
  else:
    return value
  raise ConfigError(f"{source}: {path} expects {type(default).__name__} (default {default!r}), "
                    f"got {type(value).__name__} {value!r}")


def merge(base: ConfigDict, update: Any, *, path: str = "", source: str = "config", replace_open: bool = True) -> None:
  """Merges `update` (dict or ConfigDict) into `base` in place, rejecting unknown keys.

  With `replace_open`, an open map given as a whole replaces its default entries (a config
  file lists all its data sources); overrides add to or edit single entries instead."""
  open_maps = _open_maps()
  update = _as_dict(update)
  if not isinstance(update, dict):
    raise ConfigError(f"{source}: {path or 'config'} must be a mapping, got {type(update).__name__}")
  for key, value in update.items():
    full = f"{path}.{key}" if path else key
    if path in open_maps:
      if key not in base:
        with base.unlocked() if base.is_locked else _nullcontext():
          base[key] = open_maps[path]()
      merge(base[key], value, path=full, source=source, replace_open=replace_open)
      continue
    if key not in base:
      raise _unknown(path, key, base.keys(), source)
    current = base[key]
    if isinstance(current, ConfigDict):
      if replace_open and full in open_maps and isinstance(_as_dict(value), dict):
        # An open map given as a whole replaces the default entries.
        with current.unlocked() if current.is_locked else _nullcontext():
          for old in list(current.keys()):
            del current[old]
      merge(current, value, path=full, source=source, replace_open=replace_open)
    else:
      base[key] = _check_type(full, current, _as_dict(value), source)


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def parse_override(text: str) -> tuple[str, Any]:
  """'--config.a.b=v' or 'a.b=v' -> ('a.b', parsed v). Values are Python literals where they
  parse as one (numbers, True/False/None, tuples, lists), else strings; 'true'/'false' work too."""
  body = text[2:] if text.startswith("--") else text
  if body.startswith("config."):
    body = body[len("config."):]
  if "=" not in body:
    raise ConfigError(f"override {text!r} must look like --config.KEY=VALUE")
  key, raw = body.split("=", 1)
  lowered = raw.strip().lower()
  if lowered in ("true", "false"):
    return key, lowered == "true"
  if lowered in ("none", "null"):
    return key, None
  try:
    return key, ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return key, raw


def apply_override(config: ConfigDict, key: str, value: Any, source: str = "override") -> None:
  parts = key.split(".")
  nested: Any = value
  for part in reversed(parts):
    nested = {part: nested}
  merge(config, nested, source=f"{source} --config.{key}", replace_open=False)


def load_file(path: str) -> Any:
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_jaxtrain_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: a config file must define get_config()")
  return module.get_config()


def load_config(path: str | None = None, overrides: Iterable[str] = (), *, base: Any = None,
                init_from_must_exist: bool = True) -> ConfigDict:
  """Defaults <- config file <- overrides, validated and locked.

  `base` may be a dict / ConfigDict used instead of (or before) the file, for the Python API.
  With `model.init_from` set, architecture fields left at their defaults are taken from that
  HF directory or checkpoint (fields set explicitly must agree with it).
  """
  config = defaults()
  if base is not None:
    merge(config, base, source="config")
  if path is not None:
    merge(config, load_file(path), source=path)
  for text in overrides:
    key, value = parse_override(text)
    apply_override(config, key, value)
  if config.model.init_from:
    from jaxtrain.converters.resolve import resolve_model_section
    resolve_model_section(config, missing_ok=not init_from_must_exist)
  validate(config)
  config.lock()
  return config


def validate(config: ConfigDict) -> None:
  for check in _validators():
    check(config)


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ConfigDict:
  """Loads a resolved config written by `to_json` (validated against today's defaults). Its
  architecture is already complete, so a since-deleted `model.init_from` is no error."""
  return load_config(base=json.loads(text), init_from_must_exist=False)


def require(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config {key}: {message}")


__all__ = ["ConfigError", "defaults", "load_config", "merge", "parse_override", "apply_override",
           "validate", "to_json", "from_json", "require", "ml_collections"]
