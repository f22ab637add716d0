"""Pipeline behaviour: exact resume from JSON state, eval determinism, packing modes, worker
processes, configuration errors."""

import json

import numpy as np
import pytest

from jaxtrain.data import DataError, build_pipeline
from jaxtrain.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


@pytest.fixture
def corpus(tmp_path):
  texts = [f"record {i} " + "abc " * (i % 13) for i in range(120)]
  a = tmp_path / "a.jsonl"
  a.write_text("\n".join(json.dumps({"text": t}) for t in texts[:80]))
  b = tmp_path / "b.jsonl"
  b.write_text("\n".join(json.dumps({"text": t * 4}) for t in texts[80:]))
  return {"a": {"kind": "jsonl", "path": str(a)}, "b": {"kind": "jsonl", "path": str(b), "weight": 0.5}}


def assert_same(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("prefetch,threads", [(0, 0), (3, 2)])
def test_exact_resume_from_json_state(corpus, make_config, prefetch, threads):
  config = make_config(sources=corpus, seq_len=64, batch=4, prefetch=prefetch, threads=threads, shuffle_window=16)
  it = build_pipeline(config, "train")
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # must survive JSON
  expected = [next(it) for _ in range(9)]
  stats = it.stats()
  resumed = build_pipeline(config, "train")
  resumed.set_state(state)
  assert_same([next(resumed) for _ in range(9)], expected)
  assert resumed.stats()["documents"] == stats["documents"]
  assert resumed.stats()["batches"] == 16
  it.close()
  resumed.close()


def test_resume_in_a_finite_run_and_at_its_end(corpus, make_config):
  config = make_config(sources=corpus, seq_len=64, batch=4, epochs=1)
  full = list(build_pipeline(config, "train"))
  it = build_pipeline(config, "train")
  head = [next(it) for _ in range(3)]
  resumed = build_pipeline(config, "train")
  resumed.set_state(it.get_state())
  assert_same(head + list(resumed), full)
  resumed.set_state(resumed.get_state())
  assert list(resumed) == []


def test_state_of_another_pipeline_is_refused(corpus, make_config):
  it = build_pipeline(make_config(sources=corpus, seq_len=64, batch=4), "train")
  next(it)
  other = build_pipeline(make_config(sources=corpus, seq_len=32, batch=4), "train")
  with pytest.raises(DataError, match="different data pipeline.*seq_len"):
    other.set_state(it.get_state())


def test_eval_is_finite_and_deterministic(corpus, make_config, contract):
  config = make_config(sources=corpus, seq_len=64, batch=4, eval_fraction=0.2)
  first = list(build_pipeline(config, "eval"))
  assert first and len(first) < 40
  assert_same(first, list(build_pipeline(config, "eval")))
  for b in first:
    contract(b, 4, 64, TOK.pad_id)


@pytest.mark.parametrize("packing", ["first_fit", "best_fit", "none"])
def test_packing_modes(corpus, make_config, contract, packing):
  config = make_config(sources=corpus, seq_len=128, batch=4, packing=packing, epochs=1)
  it = build_pipeline(config, "train")
  batches = list(it)
  for b in batches:
    contract(b, 4, 128, TOK.pad_id)
    if packing == "none":
      assert b["segment_ids"].max() <= 1
  stats = it.stats()
  # Mixed finite sources end when the first one (relative to its weight) is used up.
  sizes = stats["documents_in_split"]
  assert stats["documents"] == int(min(sizes["a"] / (2 / 3), sizes["b"] / (1 / 3)))
  assert 0 < stats["packing_efficiency"] <= 1
  assert stats["tokens"] == sum(int((b["segment_ids"] > 0).sum()) for b in batches)
  if packing != "none":
    assert stats["packing_efficiency"] > 0.8


def test_worker_processes(corpus, make_config, contract):
  config = make_config(sources=corpus, seq_len=64, batch=4, workers=2, prefetch=2)
  it = build_pipeline(config, "train")
  for _ in range(3):
    contract(next(it), 4, 64, TOK.pad_id)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  assert it.stats()["documents"] > 0  # counters come back from the workers
  it.set_state(state)  # (a fresh pipeline resumes the same way; this saves spawning workers twice)
  assert_same([next(it) for _ in range(4)], expected)
  it.close()


def test_worker_errors_name_the_record(tmp_path, make_config):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n{"text": 5}\n' * 4)
  config = make_config(sources={"s": {"kind": "jsonl", "path": str(path), "holdout": "none"}}, seq_len=32,
                       batch=2, workers=1)
  with pytest.raises(DataError, match=rf"{path}:\d+: bad record \(non_string_field"):
    list(build_pipeline(config, "train"))


def test_tokenizer_vocab_must_fit_the_model(qwen_dir, make_config):
  from jaxtrain.config import ConfigError
  config = make_config(tokenizer=qwen_dir)
  with pytest.raises(ConfigError, match="model.vocab_size"):
    build_pipeline(config, "train")
