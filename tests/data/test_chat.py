"""Chat data: loss masks land exactly on assistant tokens (end-of-turn included) for a
Qwen-style and a Llama-3-style template, with multi-turn conversations, tool calls and tool
messages."""

import json

import numpy as np
import pytest

from jaxtrain.data.formats import DocumentTransform
from jaxtrain.data.tokenizer import HFTokenizer

W = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [{"role": "system", "content": "You are a patient math tutor."},
                  {"role": "user", "content": "What is a prime number?"},
                  {"role": "assistant", "content": "A whole number above 1 divisible only by 1 and itself."},
                  {"role": "user", "content": "Is 91 prime?"},
                  {"role": "assistant", "content": "No: 91 = 7 × 13."}]},
    {"messages": [{"role": "user", "content": "What's the weather in Oslo?"},
                  {"role": "assistant", "content": None, "tool_calls": [CALL]},
                  {"role": "tool", "content": '{"temperature": 4, "sky": "snow"}'},
                  {"role": "assistant", "content": "It is 4 °C with snow in Oslo."}],
     "tools": [W]},
]


def expected_turns(style: str, messages: list) -> list[str]:
  """The text of each assistant turn as the model must produce it, written out by hand."""
  out = []
  for m in messages:
    if m["role"] != "assistant":
      continue
    if m.get("tool_calls"):
      fn = m["tool_calls"][0]["function"]
      if style == "qwen":
        out.append('<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call><|im_end|>\n'
                   % (fn["name"], json.dumps(fn["arguments"])))
      else:
        out.append('{"name": "%s", "parameters": %s}<|eot_id|>' % (fn["name"], json.dumps(fn["arguments"])))
    else:
      out.append(m["content"] + ("<|im_end|>\n" if style == "qwen" else "<|eot_id|>"))
  return out


def transform(tok, loss_on="assistant", on_bad_record="error"):
  entry = {"format": "chat", "messages_field": "messages", "tools_field": "tools"}
  return DocumentTransform("chat", "jsonl", entry, tok, seq_len=2048, overlong="error", on_bad_record=on_bad_record,
                           loss_on=loss_on, add_bos=True, add_eos=True)


def learned(piece):
  rows = piece["tokens"]
  return rows[rows[:, 2] > 0, 1]


@pytest.fixture(params=["qwen", "llama"])
def styled(request, qwen_dir, llama_dir):
  return request.param, HFTokenizer(qwen_dir if request.param == "qwen" else llama_dir)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_mask_is_exactly_the_assistant_turns(styled, index):
  style, tok = styled
  record = CONVERSATIONS[index]
  (piece,) = transform(tok)((json.dumps(record).encode(), "f.jsonl", "f.jsonl:1"))
  rows = piece["tokens"]
  full = tok.apply_chat_template(record["messages"], tools=record.get("tools"))
  assert rows[:, 0].tolist() == tok.encode(full)  # the whole conversation, tokenized as one text
  turns = expected_turns(style, record["messages"])
  assert tok.decode(learned(piece)) == "".join(turns)
  assert learned(piece).tolist() == sum((tok.encode(t) for t in turns), [])
  # Every learned token is followed in the text by ... its own target: masks mark targets.
  mask = rows[:, 2].astype(bool)
  assert not mask[-1] and (rows[:-1, 1] == rows[1:, 0]).all()
  # Runs of learned targets: one per assistant turn, each starting right after the turn's header.
  runs = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int)])) == 1)
  assert len(runs) == len(turns)


def test_last_assistant_and_all(styled):
  style, tok = styled
  record = CONVERSATIONS[1]
  (last,) = transform(tok, loss_on="last_assistant")((json.dumps(record).encode(), "f", "f:1"))
  assert tok.decode(learned(last)) == expected_turns(style, record["messages"])[-1]
  (every,) = transform(tok, loss_on="all")((json.dumps(record).encode(), "f", "f:1"))
  assert every["tokens"][:-1, 2].all() and not every["tokens"][-1, 2]


def test_chat_pipeline_masks_on_real_batches(styled, tmp_path, make_config, contract, jsonl):
  from jaxtrain.data import build_pipeline
  style, tok = styled
  path = jsonl(tmp_path / "chat.jsonl", CONVERSATIONS * 4)
  config = make_config(sources={"chat": {"kind": "jsonl", "path": path, "format": "chat", "holdout": "none"}},
                       tokenizer=tok.name_or_path, seq_len=512, batch=4, epochs=1, model_vocab=1024)
  rendered = {tok.apply_chat_template(r["messages"], tools=r.get("tools")): r for r in CONVERSATIONS}
  seen = 0
  for batch in build_pipeline(config, "train", tok):
    contract(batch, 4, 512, tok.pad_id)
    for r in range(4):
      for s in set(batch["segment_ids"][r].tolist()) - {0}:
        at = batch["segment_ids"][r] == s
        record = rendered[tok.decode(batch["input_ids"][r][at])]
        mask = batch["loss_mask"][r][at] > 0
        assert tok.decode(batch["target_ids"][r][at][mask]) == "".join(expected_turns(style, record["messages"]))
        seen += 1
  assert seen == 12


def test_template_that_rewrites_history_is_an_error(qwen_dir):
  tok = HFTokenizer(qwen_dir, chat_template=(
      "{% for m in messages %}{% if loop.last or m.role != 'assistant' %}<|im_start|>{{ m.role }}\n{{ m.content }}"
      "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"))
  record = CONVERSATIONS[1]
  from jaxtrain.data.errors import DataError
  with pytest.raises(DataError, match=r"f:1: bad record \(template_error.*last_assistant"):
    transform(tok)((json.dumps(record).encode(), "f", "f:1"))
  (piece,) = transform(tok, loss_on="last_assistant")((json.dumps(record).encode(), "f", "f:1"))
  assert tok.decode(learned(piece)) == "No: 91 = 7 × 13.<|im_end|>\n"
