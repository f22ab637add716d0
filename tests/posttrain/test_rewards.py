"""Reward functions: the built-ins, loading by name / module / file, and errors that name the
function at fault."""

from __future__ import annotations

import math

import pytest
from ml_collections import ConfigDict

from jaxtrain.config import ConfigError
from jaxtrain.posttrain import rewards as R
from jaxtrain.posttrain.grpo_config import reward_defaults


def test_builtins():
  comps = ["  7 ", "<think>x</think> <answer>3</answer>", "the answer is 12", "no"]
  answers = ["7", "3", "12", "5"]
  assert R.exact_match(None, comps, answer=answers) == [1.0, 0.0, 0.0, 0.0]
  assert R.exact_match(None, comps, column="gold", gold=answers) == [1.0, 0.0, 0.0, 0.0]
  assert R.regex_match(None, comps, pattern=r"\d+$") == [0.0, 0.0, 1.0, 0.0]
  assert R.format(None, comps) == [0.0, 1.0, 0.0, 0.0]
  assert R.number_match(None, comps, answer=answers) == [1.0, 1.0, 1.0, 0.0]
  with pytest.raises(KeyError, match="'answer'"):
    R.exact_match(None, comps, gold=answers)


def _section(**entries):
  out = ConfigDict()
  for name, kw in entries.items():
    entry = reward_defaults()
    entry.update(kw)
    out[name] = entry
  return out


def test_loading_by_name_module_and_file(tmp_path):
  path = tmp_path / "my_rewards.py"
  path.write_text("def length(prompts, completions, **kw):\n  return [len(c) for c in completions]\n")
  loaded = R.load_rewards(_section(a={"function": "regex_match", "pattern": "x", "weight": 0.5},
                                   b={"function": f"{path}:length"},
                                   c={"function": "jaxtrain.posttrain.rewards:number_match", "column": "gold"}))
  assert [(r.name, r.weight, r.kwargs) for r in loaded] == [("a", 0.5, {"pattern": "x"}), ("b", 1.0, {}),
                                                           ("c", 1.0, {"column": "gold"})]
  table = R.score(loaded, ["p", "q"], ["x1", "22"], [[1], [2]], {"gold": ["1", "3"]})
  assert table == [[1.0, 0.0], [2.0, 2.0], [1.0, 0.0]]


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:fn", "cannot import reward function 'no_such_module_xyz:fn'"),
    ("jaxtrain.posttrain.rewards:nope", "has no function 'nope'"),
    ("/nonexistent/r.py:fn", "no file"),
    ("exactmatch", "neither a built-in"),
])
def test_unimportable_reward_is_a_config_error_naming_it(spec, message):
  with pytest.raises(ConfigError, match="grpo.rewards.bad.function") as e:
    R.load_rewards(_section(bad={"function": spec}))
  assert message in str(e.value)


def test_reward_that_raises_or_misbehaves_is_named():
  def boom(prompts, completions, **kw):
    raise ZeroDivisionError("oops")

  def short(prompts, completions, **kw):
    return [1.0]

  def maybe(prompts, completions, **kw):
    return [None, 2]

  def text(prompts, completions, **kw):
    return ["high", 1.0]

  args = (["p", "q"], ["a", "b"], [[1], [2]], {})
  with pytest.raises(R.RewardError, match="reward 'boom'.*raised ZeroDivisionError: oops"):
    R.score([R.Reward("boom", boom, 1.0, {})], *args)
  with pytest.raises(R.RewardError, match="reward 'short' returned 1 values for 2 completions"):
    R.score([R.Reward("short", short, 1.0, {})], *args)
  with pytest.raises(R.RewardError, match="reward 'text' returned 'high' for completion 0"):
    R.score([R.Reward("text", text, 1.0, {})], *args)
  row = R.score([R.Reward("maybe", maybe, 1.0, {})], *args)[0]
  assert math.isnan(row[0]) and row[1] == 2.0
