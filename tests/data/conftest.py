"""Fixtures for the data tests: small local tokenizers with real-style chat templates, configs,
and the batch-contract check. Nothing is downloaded."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REPO = pathlib.Path(__file__).resolve().parents[2]
SFT_EXAMPLE = REPO / "configs" / "data" / "sft_example.jsonl"

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|finetune_right_pad_id|>"]


def _corpus() -> list[str]:
  texts = []
  for line in SFT_EXAMPLE.read_text(encoding="utf-8").splitlines():
    record = json.loads(line)
    texts += [m.get("content") or "" for m in record["messages"]]
    texts.append(json.dumps(record))
  texts += ["You are a helpful assistant. Given the following functions, respond with JSON.",
            "system user assistant tool ipython Environment Cutting Knowledge Date Today"] * 3
  return texts


def build_bpe_dir(path: pathlib.Path, specials: list[str], config: dict, vocab_size: int = 700) -> str:
  """A byte-level BPE tokenizer trained on the SFT example, saved as a Hugging Face directory."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_corpus(), trainer)
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **config}
  (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
  return str(path)


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory) -> str:
  template = (FIXTURES / "qwen_chat_template.jinja").read_text()
  return build_bpe_dir(tmp_path_factory.mktemp("qwen_tok"), QWEN_SPECIALS,
                       {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                        "chat_template": template})


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> str:
  template = (FIXTURES / "llama3_chat_template.jinja").read_text()
  return build_bpe_dir(tmp_path_factory.mktemp("llama_tok"), LLAMA_SPECIALS,
                       {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                        "pad_token": "<|finetune_right_pad_id|>", "chat_template": template})


@pytest.fixture
def make_config():
  """make_config(sources={...}, batch=4, **data_keys) -> a validated run config."""
  from jaxtrain.train.run_config import load_config

  def make(sources=None, batch=4, model_vocab=None, **data):
    base = {"data": dict(data), "train": {"global_batch": batch}}
    if sources is not None:
      base["data"]["sources"] = sources
    base["data"].setdefault("prefetch", 0)
    if model_vocab is not None:
      base["model"] = {"vocab_size": model_vocab}
    return load_config(base=base)

  return make


def check_contract(batch: dict, batch_size: int, seq_len: int, pad_id: int) -> None:
  """The batch contract of docs/architecture.md, checked element by element."""
  keys = {"input_ids", "target_ids", "loss_mask", "segment_ids", "positions"}
  assert set(batch) == keys, set(batch)
  for k in keys:
    assert batch[k].shape == (batch_size, seq_len), (k, batch[k].shape)
    assert batch[k].dtype == np.int32, (k, batch[k].dtype)
  seg, pos, mask = batch["segment_ids"], batch["positions"], batch["loss_mask"]
  inp, tgt = batch["input_ids"], batch["target_ids"]
  assert set(np.unique(mask)) <= {0, 1}
  pad = seg == 0
  assert not mask[pad].any(), "loss on padding"
  assert (inp[pad] == pad_id).all() and (pos[pad] == 0).all()
  for r in range(batch_size):
    s = seg[r]
    real = s[s > 0]
    # Segments are 1..k, contiguous runs, padding only at the end of a row.
    if len(real):
      assert (s[:len(real)] > 0).all(), "padding inside a row"
      assert real[0] == 1 and set(np.diff(real)) <= {0, 1}
    for t in range(len(real)):
      start = t == 0 or s[t] != s[t - 1]
      assert pos[r, t] == (0 if start else pos[r, t - 1] + 1)
      last = t == len(real) - 1 or s[t + 1] != s[t]
      if not last:
        assert tgt[r, t] == inp[r, t + 1], "target is not the next token of the document"
  assert batch["loss_mask"].sum() > 0 or (seg == 0).all()


@pytest.fixture
def contract():
  return check_contract


def write_jsonl(path: pathlib.Path, records: list) -> str:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


@pytest.fixture
def jsonl():
  return write_jsonl

