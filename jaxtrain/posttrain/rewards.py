"""Reward functions for RL: loading them from config, the built-ins, and scoring completions.

A reward function is any Python callable

    fn(prompts: list, completions: list[str], *, completion_ids: list[list[int]], **columns)
        -> list[float | None]

with one value per completion (None: the function does not apply to that completion; it is
left out of that function's statistics and adds nothing to the total). `prompts` holds each
completion's prompt as its record gave it (a string or chat messages); `columns` are the
record's other fields, one value per completion, as TRL passes them. Config names a function as
a built-in name, `package.module:function`, or `path/to/file.py:function`.

A function that cannot be imported, raises, or returns the wrong number of values is an error
naming it (never a silent zero).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import re
from typing import Any, Callable, Sequence

from jaxtrain.config import ConfigError

DEFAULT_FORMAT = r"<think>.*?</think>\s*<answer>.*?</answer>"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(RuntimeError):
  """A reward function failed; the message names it."""


# -- built-ins ---------------------------------------------------------------------------------

def _column(columns: dict, column: str, fn: str) -> list:
  if column not in columns:
    raise KeyError(f"{fn} needs the record field {column!r} (fields: {', '.join(sorted(columns)) or 'none'})")
  return columns[column]


def exact_match(prompts, completions, *, column: str = "answer", **columns) -> list[float]:
  """1.0 when the completion, stripped, equals the record's `column` (stripped), else 0.0."""
  answers = _column(columns, column, "exact_match")
  return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answers)]


def regex_match(prompts, completions, *, pattern: str, **columns) -> list[float]:
  """1.0 when `pattern` occurs in the completion (re.search, DOTALL), else 0.0."""
  rx = re.compile(pattern, re.DOTALL)
  return [float(rx.search(c) is not None) for c in completions]


def format(prompts, completions, *, pattern: str = DEFAULT_FORMAT, **columns) -> list[float]:  # noqa: A001
  """1.0 when the whole completion (stripped) matches `pattern` (default: a <think> block then an
  <answer> block), else 0.0."""
  rx = re.compile(pattern, re.DOTALL)
  return [float(rx.fullmatch(c.strip()) is not None) for c in completions]


def number_match(prompts, completions, *, column: str = "answer", **columns) -> list[float]:
  """1.0 when the last number in the completion equals the record's `column` numerically."""
  out = []
  for c, a in zip(completions, _column(columns, column, "number_match")):
    found = _NUMBER.findall(c)
    out.append(float(bool(found) and math.isclose(float(found[-1]), float(a))))
  return out


BUILTINS: dict[str, Callable] = {"exact_match": exact_match, "regex_match": regex_match, "format": format,
                                 "number_match": number_match}


def soft_overlong_penalty(lengths: Sequence[int], max_tokens: int, buffer: int, penalty: float) -> list[float]:
  """DAPO's soft overlong punishment: 0 up to `max_tokens - buffer` tokens, then falling linearly
  to `-penalty` at `max_tokens`."""
  start = max_tokens - buffer
  return [0.0 if n <= start else -penalty * min(n - start, buffer) / buffer for n in lengths]


# -- loading and scoring -----------------------------------------------------------------------

def load_function(spec: str, key: str) -> Callable:
  """A built-in name, `module:function` or `file.py:function` -> the callable; ConfigError
  naming `key` and `spec` when it cannot be imported."""
  if spec in BUILTINS:
    return BUILTINS[spec]
  if ":" not in spec:
    raise ConfigError(f"config {key}: {spec!r} is neither a built-in reward ({', '.join(BUILTINS)}) nor "
                      f"'module:function'")
  where, name = spec.rsplit(":", 1)
  try:
    if where.endswith(".py"):
      if not os.path.exists(where):
        raise FileNotFoundError(f"no file {where!r}")
      module_spec = importlib.util.spec_from_file_location(f"_jaxtrain_reward_{abs(hash(where))}", where)
      module = importlib.util.module_from_spec(module_spec)
      module_spec.loader.exec_module(module)
    else:
      module = importlib.import_module(where)
  except Exception as e:  # noqa: BLE001 - any import failure is reported with the key
    raise ConfigError(f"config {key}: cannot import reward function {spec!r}: {type(e).__name__}: {e}") from e
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigError(f"config {key}: {where!r} has no function {name!r}")
  return fn


@dataclasses.dataclass(frozen=True)
class Reward:
  name: str
  fn: Callable
  weight: float
  kwargs: dict


def load_rewards(section: Any) -> list[Reward]:
  """The `grpo.rewards` config map -> rewards, in name order."""
  rewards = []
  for name in sorted(section):
    entry = section[name]
    kwargs = {k: entry[k] for k in ("pattern", "column") if entry[k]}
    rewards.append(Reward(name, load_function(entry.function, f"grpo.rewards.{name}.function"), float(entry.weight),
                          kwargs))
  return rewards


def score(rewards: Sequence[Reward], prompts: list, completions: list[str], completion_ids: list[list[int]],
          columns: dict[str, list]) -> list[list[float]]:
  """Per reward, one value per completion (NaN where a function returned None)."""
  table = []
  for r in rewards:
    try:
      values = r.fn(prompts, completions, completion_ids=completion_ids, **r.kwargs, **columns)
    except Exception as e:  # noqa: BLE001 - re-raised with the reward's name
      raise RewardError(f"reward {r.name!r} ({getattr(r.fn, '__module__', '?')}.{getattr(r.fn, '__name__', r.fn)}) "
                        f"raised {type(e).__name__}: {e}") from e
    values = list(values) if values is not None else None
    if values is None or len(values) != len(completions):
      got = "None" if values is None else f"{len(values)} values"
      raise RewardError(f"reward {r.name!r} returned {got} for {len(completions)} completions")
    row = []
    for i, v in enumerate(values):
      if v is None:
        row.append(math.nan)
        continue
      try:
        row.append(float(v))
      except (TypeError, ValueError):
        raise RewardError(f"reward {r.name!r} returned {v!r} for completion {i}: not a number") from None
    table.append(row)
  return table
