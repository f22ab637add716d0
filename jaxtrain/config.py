"""Config machinery: defaults, config files, dotted overrides and validation, for any `Schema`.

A config file is a Python file with `get_config()` returning an `ml_collections.ConfigDict`
(or a plain dict) that holds any subset of the defaults. Every key must exist in the defaults;
an unknown key is an error that names the key and suggests close matches. A few nodes are open
maps (for example `data.sources`): their entries are free names, each validated against a
template.

This module is the bottom layer: it imports nothing of the package. Each subsystem owns its
section (`models/config.py`, `data/config.py`, `parallel/mesh.py`, `train/config.py`) and
`train/run_config.py` assembles them into the run's schema (`jaxtrain.load_config`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import os
from typing import Any, Callable, Iterable, Mapping

from ml_collections import ConfigDict


class ConfigError(ValueError):
  """A configuration problem, with the offending key in the message."""


OpenMaps = Mapping[str, Callable[[], ConfigDict]]
AUTO = "auto"  # a value some keys accept in place of their type: the planner chooses it


def is_auto(value: Any) -> bool:
  return isinstance(value, str) and value == AUTO


@dataclasses.dataclass(frozen=True)
class Schema:
  """What a config may hold: its defaults, its open maps (dotted paths whose children are
  user-named entries, each validated against a template), its validators, and the keys that
  also accept "auto" whatever their type (a section given as "auto", e.g. `--config.mesh=auto`,
  sets every such key under it)."""
  defaults: Callable[[], ConfigDict]
  open_maps: OpenMaps = dataclasses.field(default_factory=dict)
  validators: tuple[Callable[[ConfigDict], None], ...] = ()
  auto_keys: frozenset[str] = frozenset()

  def build(self, path: str | None = None, overrides: Iterable[str] = (), *, base: Any = None) -> ConfigDict:
    """Defaults <- `base` (dict / ConfigDict) <- config file <- overrides; not yet validated."""
    config = self.defaults()
    if base is not None:
      merge(config, base, source="config", open_maps=self.open_maps, auto_keys=self.auto_keys)
    if path is not None:
      merge(config, load_file(path), source=path, open_maps=self.open_maps, auto_keys=self.auto_keys)
    for text in overrides:
      key, value = parse_override(text)
      if value is None and isinstance(_lookup(config, key), str):
        value = text.split("=", 1)[1]  # a string key keeps the word: --config.model.remat=none
      apply_override(config, key, value, open_maps=self.open_maps, auto_keys=self.auto_keys)
    return config

  def validate(self, config: ConfigDict) -> None:
    for check in self.validators:
      check(config)


def _lookup(config: ConfigDict, key: str) -> Any:
  """The value at dotted `key`, or None where the path does not exist."""
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


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


def merge(base: ConfigDict, update: Any, *, path: str = "", source: str = "config", replace_open: bool = True,
          open_maps: OpenMaps | None = None, auto_keys: frozenset[str] = frozenset()) -> None:
  """Merges `update` (dict or ConfigDict) into `base` in place, rejecting unknown keys.

  With `replace_open`, an open map given as a whole replaces its default entries (a config
  file lists all its data sources); overrides add to or edit single entries instead. Keys in
  `auto_keys` also accept "auto"; "auto" for a whole section sets its auto keys."""
  open_maps = open_maps or {}
  update = _as_dict(update)
  if is_auto(update):
    keys = [k for k in base.keys() if (f"{path}.{k}" if path else k) in auto_keys]
    if not keys:
      raise ConfigError(f"{source}: {path or 'config'} does not accept 'auto'")
    for key in keys:
      base[key] = AUTO
    return
  if not isinstance(update, dict):
    raise ConfigError(f"{source}: {path or 'config'} must be a mapping, got {type(update).__name__}")
  for key, value in update.items():
    full = f"{path}.{key}" if path else key
    if path in open_maps:
      if key not in base:
        with base.unlocked() if base.is_locked else contextlib.nullcontext():
          base[key] = open_maps[path]()
      merge(base[key], value, path=full, source=source, replace_open=replace_open, open_maps=open_maps,
            auto_keys=auto_keys)
      continue
    if key not in base:
      raise _unknown(path, key, base.keys(), source)
    current = base[key]
    if isinstance(current, ConfigDict):
      if replace_open and full in open_maps and isinstance(_as_dict(value), dict):
        # An open map given as a whole replaces the default entries.
        with current.unlocked() if current.is_locked else contextlib.nullcontext():
          for old in list(current.keys()):
            del current[old]
      merge(current, value, path=full, source=source, replace_open=replace_open, open_maps=open_maps,
            auto_keys=auto_keys)
    elif full in auto_keys and (is_auto(value) or is_auto(current)):
      base[key] = _as_dict(value)  # "auto", or a value in place of "auto" (the validators check it)
    else:
      base[key] = _check_type(full, current, _as_dict(value), source)


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


def apply_override(config: ConfigDict, key: str, value: Any, source: str = "override", *,
                   open_maps: OpenMaps | None = None, auto_keys: frozenset[str] = frozenset()) -> None:
  parts = key.split(".")
  nested: Any = value
  for part in reversed(parts):
    nested = {part: nested}
  merge(config, nested, source=f"{source} --config.{key}", replace_open=False, open_maps=open_maps,
        auto_keys=auto_keys)


def load_file(path: str) -> Any:
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_jaxtrain_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path}: a config file must define get_config()")
  return module.get_config()


def to_json(config: ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def require(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config {key}: {message}")


__all__ = ["AUTO", "ConfigError", "Schema", "is_auto", "apply_override", "load_file", "merge", "parse_override", "require", "to_json"]
