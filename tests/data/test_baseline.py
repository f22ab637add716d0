"""The unigram baseline, checked against a hand computation."""

import json
import math

import pytest

from jaxtrain.data import build_tokenizer, unigram_loss


def test_unigram_loss_by_hand(tmp_path, make_config):
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["aab", "abc"]))
  (tmp_path / "eval.jsonl").write_text(json.dumps({"text": "ab"}))
  sources = {"tr": {"kind": "jsonl", "path": str(tmp_path / "train.jsonl"), "holdout": "none"},
             "ev": {"kind": "jsonl", "path": str(tmp_path / "eval.jsonl"), "holdout": "all"}}
  config = make_config(sources=sources, seq_len=16, batch=2)
  tok = build_tokenizer(config.data)
  # Learned targets: everything after bos, eos included ("aab<eos>", "abc<eos>").
  counts = {"a": 3, "b": 2, "c": 1, "<eos>": 2}
  total, vocab = sum(counts.values()), tok.vocab_size
  # The eval-only source "ev" has no training documents: only "tr" is fitted (weights renormalised).
  p = lambda k: (counts.get(k, 0) + 1) / (total + vocab)  # noqa: E731
  expected = -(math.log(p("a")) + math.log(p("b")) + math.log(p("<eos>"))) / 3
  assert unigram_loss(config, tok) == pytest.approx(expected, rel=1e-9)


def test_unigram_loss_on_the_quickstart_corpus(make_config):
  config = make_config(batch=4)
  tok = build_tokenizer(config.data)
  loss = unigram_loss(config, tok, batches=2, max_documents=500)
  assert 2.0 < loss < math.log(tok.vocab_size)
