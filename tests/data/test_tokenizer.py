"""Tokenizers: the byte tokenizer, and local Hugging Face directories read without transformers
(compared against transformers on the same files)."""

import json

import numpy as np
import pytest

from jaxtrain.data.tokenizer import ByteTokenizer, HFTokenizer, build_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What's the weather in Oslo?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": '{"temperature": 4}'},
    {"role": "assistant", "content": "It is 4 °C in Oslo."},
    {"role": "user", "content": "Thanks!"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}]


def test_byte_tokenizer_roundtrip_specials_and_offsets():
  tok = ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (261, 256, 257, 258)
  text = "héllo <|im_start|>wörld€<|eos|>"
  ids = tok.encode(text)
  assert ids.count(259) == 1 and ids[-1] == 258
  assert tok.decode(ids) == text
  ids2, starts = tok.encode_with_offsets(text)
  assert ids2.tolist() == ids
  # Every byte of a character starts at that character; specials at their own start.
  assert [text[s] for s in starts[:3]] == ["h", "é", "é"]
  assert text[starts[ids.index(259)]:].startswith("<|im_start|>")
  assert tok.decode([104, 105, 256], skip_special_tokens=True) == "hi"
  with pytest.raises(ValueError, match="outside"):
    tok.decode([999])


def test_byte_tokenizer_chat_template_and_pickle():
  import pickle
  tok = ByteTokenizer()
  text = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True)
  assert text == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat's the weather in Oslo?"
                  "<|im_end|>\n<|im_start|>assistant\n")
  with_tools = tok.apply_chat_template(CONVERSATION, tools=TOOLS)
  assert '"name": "get_weather"' in with_tools and "<tool_call>" in with_tools
  assert pickle.loads(pickle.dumps(tok)).encode("a<|im_end|>") == [97, 260]


@pytest.mark.parametrize("style", ["qwen", "llama"])
def test_hf_directory_matches_transformers(style, qwen_dir, llama_dir):
  transformers = pytest.importorskip("transformers")
  path = qwen_dir if style == "qwen" else llama_dir
  ours = HFTokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(path)
  assert ours.eos_id == theirs.eos_token_id and ours.pad_id == theirs.pad_token_id
  assert ours.bos_id == theirs.bos_token_id
  assert ours.vocab_size == len(theirs)
  sample = "Hello world, <|im_end|> 12 × 13 = 156 — ¿qué? 日本"
  assert ours.encode(sample) == theirs.encode(sample, add_special_tokens=False)
  assert ours.decode(ours.encode(sample)) == theirs.decode(theirs.encode(sample, add_special_tokens=False))
  cases = [
      dict(messages=CONVERSATION[:2], add_generation_prompt=True),
      dict(messages=CONVERSATION[1:5], add_generation_prompt=False),
      dict(messages=CONVERSATION, tools=TOOLS),
      dict(messages=CONVERSATION[1:], tools=TOOLS, add_generation_prompt=True),
  ]
  for case in cases:
    if style == "llama" and case.get("tools") and case["messages"][0]["role"] != "user":
      continue  # the Llama 3.1 template puts tools into the first user message
    kwargs = {k: v for k, v in case.items() if k != "messages"}
    expected = theirs.apply_chat_template(case["messages"], tokenize=False, **kwargs)
    got = ours.apply_chat_template(case["messages"], **kwargs)
    assert got == expected
    ids = theirs.apply_chat_template(case["messages"], tokenize=True, **kwargs)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ours.encode(got) == list(ids)


def test_hf_directory_without_pad_and_template_override(tmp_path, qwen_dir):
  with open(f"{qwen_dir}/tokenizer_config.json") as f:
    config = json.load(f)
  config.pop("pad_token")
  config.pop("chat_template")
  d = tmp_path / "tok"
  d.mkdir()
  (d / "tokenizer.json").write_text(open(f"{qwen_dir}/tokenizer.json").read())
  (d / "tokenizer_config.json").write_text(json.dumps(config))
  tok = HFTokenizer(str(d))
  assert tok.pad_id == tok.eos_id and tok.chat_template is None
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  (d / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
  assert HFTokenizer(str(d)).apply_chat_template([{"role": "user", "content": "hi"}]) == "[user]hi"
  template_file = tmp_path / "t.jinja"
  template_file.write_text("{% for m in messages %}<{{ m.content }}>{% endfor %}")
  tok = build_tokenizer({"tokenizer": str(d), "chat_template": str(template_file)})
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<hi>"


def test_build_tokenizer_errors(tmp_path):
  from jaxtrain.config import ConfigError
  with pytest.raises(ConfigError, match="data.tokenizer.*tokenizer.json"):
    build_tokenizer({"tokenizer": str(tmp_path), "chat_template": ""})
  with pytest.raises(ConfigError, match="data.chat_template"):
    build_tokenizer({"tokenizer": "byte", "chat_template": "no/such/file.jinja"})
  tok = build_tokenizer({"tokenizer": "byte", "chat_template": ""})
  assert isinstance(tok, ByteTokenizer) and tok.name_or_path == "byte"


def test_hf_offsets_are_character_offsets(qwen_dir):
  tok = HFTokenizer(qwen_dir)
  text = "<|im_start|>user\nnaïve café 日本<|im_end|>"
  ids, starts = tok.encode_with_offsets(text)
  assert ids.tolist() == tok.encode(text)
  assert np.all(np.diff(starts) >= 0) and starts[-1] == text.index("<|im_end|>")
