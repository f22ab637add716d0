"""RL prompts from data sources: strings and chat messages, other fields as reward columns,
exact iterator state, and bad records named by file and line."""

from __future__ import annotations

import json

import pytest

import jaxtrain
from jaxtrain.data import build_tokenizer
from jaxtrain.data.errors import DataError
from jaxtrain.posttrain.rollout import PromptData


def _data(tmp_path, records, **grpo):
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  config = jaxtrain.load_config(base={
      "train": {"method": "grpo"}, "model": {"vocab_size": 272},
      "data": {"sources": {"p": {"kind": "jsonl", "path": str(path), "format": "prompt", "holdout": "none"}}},
      "grpo": {"rewards": {"r": {"function": "exact_match"}}, **grpo}})
  return PromptData(config, build_tokenizer(config.data)), path


def test_strings_messages_columns_and_exact_state(tmp_path):
  records = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
  records.append({"prompt": [{"role": "user", "content": "hi"}], "answer": "x"})
  data, _ = _data(tmp_path, records)
  tok = data.tokenizer
  seen = data.next_batch(4)
  state = data.get_state()
  rest = data.next_batch(4)  # crosses into the second epoch (6 prompts)
  assert state == {"epoch": 0, "position": 4} and data.get_state() == {"epoch": 1, "position": 2}
  data.set_state(state)
  assert [p.ids for p in data.next_batch(4)] == [p.ids for p in rest]
  by_answer = {p.columns["answer"]: p for p in seen + rest}
  chat = by_answer["x"]
  assert chat.ids == tok.encode(tok.apply_chat_template(chat.prompt, add_generation_prompt=True))
  text = next(p for p in seen + rest if isinstance(p.prompt, str))
  assert text.ids == [tok.bos_id] + tok.encode(text.prompt) and "prompt" not in text.columns


@pytest.mark.parametrize("bad,message", [
    ({"question": "1+1="}, "no field 'prompt'"),
    ({"prompt": "x" * 40}, "prompt has 41 tokens, more than grpo.max_prompt_tokens=16"),
    ({"prompt": 7}, "must be a string or a list of chat messages"),
])
def test_bad_prompts_are_named_by_file_and_line(tmp_path, bad, message):
  data, path = _data(tmp_path, [{"prompt": "ok"}, bad], max_prompt_tokens=16)
  with pytest.raises(DataError, match=message) as e:
    data.next_batch(2)
  assert f"{path.name}:2" in str(e.value) or f"{path}:2" in str(e.value), str(e.value)


def test_prompt_format_needs_the_grpo_method(tmp_path):
  with pytest.raises(jaxtrain.ConfigError, match="format 'prompt'.*train.method=grpo"):
    jaxtrain.load_config(base={"data": {"sources": {"p": {"kind": "jsonl", "path": "x.jsonl", "format": "prompt"}}}})
