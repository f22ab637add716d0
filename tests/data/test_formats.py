"""Formats (text, prompt_completion, alpaca, custom field names) and bad records, in both
data.on_bad_record modes, through real pipelines."""

import json

import numpy as np
import pytest

from jaxtrain.data import DataError, build_pipeline
from jaxtrain.data.formats import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT
from jaxtrain.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def run_all(config):
  """Every batch of a finite pipeline, and the iterator (for its stats)."""
  it = build_pipeline(config, "train")
  return list(it), it


def documents(batches):
  """[(input text, learned target text)] per segment."""
  out = []
  for b in batches:
    for r in range(b["input_ids"].shape[0]):
      for s in sorted(set(b["segment_ids"][r].tolist()) - {0}):
        at = b["segment_ids"][r] == s
        out.append((TOK.decode(b["input_ids"][r][at]), TOK.decode(b["target_ids"][r][at][b["loss_mask"][r][at] > 0])))
  return sorted(out)


def source(path, fmt, **extra):
  return {"s": {"kind": "jsonl", "path": path, "format": fmt, "holdout": "none", **extra}}


def test_text_format(tmp_path, make_config, contract, jsonl):
  path = jsonl(tmp_path / "t.jsonl", [{"text": "abc"}, {"text": "hello world"}, {"body": "other field name"}])
  config = make_config(sources=source(path, "text"), seq_len=16, batch=2, epochs=1, on_bad_record="skip")
  batches, it = run_all(config)
  for b in batches:
    contract(b, 2, 16, TOK.pad_id)
  assert documents(batches) == [("<|bos|>abc<|eos|>", "abc<|eos|>"),
                                ("<|bos|>hello world<|eos|>", "hello world<|eos|>")]
  assert it.stats()["bad_records"] == {"missing_field": {path: 1}}
  config = make_config(sources=source(path, "text", text_field="body"), seq_len=32, batch=2, epochs=1,
                       on_bad_record="skip", add_bos=False, add_eos=False)
  batches, it = run_all(config)
  assert documents(batches) == [("other field name", "ther field name")]
  assert it.stats()["bad_records_skipped"] == 2


def test_prompt_completion_and_custom_fields(tmp_path, make_config, contract, jsonl):
  path = jsonl(tmp_path / "pc.jsonl", [{"q": "2+2=", "a": "4"}, {"q": "capital of France: ", "a": "Paris"}])
  config = make_config(sources=source(path, "prompt_completion", prompt_field="q", completion_field="a"),
                       seq_len=32, batch=2, epochs=1)
  batches, _ = run_all(config)
  contract(batches[0], 2, 32, TOK.pad_id)
  assert documents(batches) == [("<|bos|>2+2=4<|eos|>", "4<|eos|>"),
                                ("<|bos|>capital of France: Paris<|eos|>", "Paris<|eos|>")]


def test_alpaca(tmp_path, make_config, contract, jsonl):
  records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
             {"instruction": "Say hi.", "output": "hi"}]
  path = jsonl(tmp_path / "alpaca.jsonl", records)
  config = make_config(sources=source(path, "alpaca"), seq_len=512, batch=2, epochs=1, add_bos=False)
  batches, _ = run_all(config)
  contract(batches[0], 2, 512, TOK.pad_id)
  with_input = ALPACA_PROMPT.format(instruction="Add the numbers.", input="2 and 3")
  without = ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi.")
  assert documents(batches) == sorted([(with_input + "5<|eos|>", "5<|eos|>"), (without + "hi<|eos|>", "hi<|eos|>")])


BAD_LINES = {
    "malformed_json": '{"messages": [{"role": "user", "content": "hi"}',
    "missing_field": json.dumps({"conversation": GOOD_CHAT["messages"]}),
    "non_string_content": json.dumps({"messages": [{"role": "user", "content": ["hi"]},
                                                   {"role": "assistant", "content": "x"}]}),
    "empty_conversation": json.dumps({"messages": []}),
    "bad_role": json.dumps({"messages": [{"role": "robot", "content": "beep"}]}),
    "no_assistant_turn": json.dumps({"messages": [{"role": "user", "content": "anyone?"}]}),
    "not_an_object": "[1, 2, 3]",
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_bad_record_is_an_error_naming_file_and_line(reason, tmp_path, make_config, jsonl):
  lines = [GOOD_CHAT, GOOD_CHAT, "", BAD_LINES[reason], GOOD_CHAT]  # the bad record is on line 4
  path = jsonl(tmp_path / "chat.jsonl", lines)
  config = make_config(sources=source(path, "chat"), seq_len=64, batch=2, epochs=1)
  with pytest.raises(DataError, match=rf"{path}:4: bad record \({reason}.*on_bad_record=skip"):
    run_all(config)


def test_bad_record_error_crosses_the_prefetch_thread(tmp_path, make_config, jsonl):
  path = jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT, BAD_LINES["malformed_json"]])
  config = make_config(sources=source(path, "chat"), seq_len=64, batch=2, epochs=1, prefetch=2, threads=2)
  with pytest.raises(DataError, match=rf"{path}:2: bad record \(malformed_json"):
    run_all(config)


def test_bad_records_skipped_are_counted_and_reported(tmp_path, make_config, jsonl):
  a = jsonl(tmp_path / "a.jsonl", [GOOD_CHAT] + [BAD_LINES[r] for r in sorted(BAD_LINES)] + ["   ", GOOD_CHAT])
  b = jsonl(tmp_path / "b.jsonl", [BAD_LINES["malformed_json"], GOOD_CHAT])
  config = make_config(sources=source(f"{a},{b}", "chat"), seq_len=64, batch=2, epochs=1, on_bad_record="skip")
  batches, it = run_all(config)
  stats = it.stats()
  assert stats["documents"] == 3 and len(documents(batches)) == 3
  expected = {r: {a: 1} for r in BAD_LINES}
  expected["malformed_json"][b] = 1
  expected["empty_line"] = {a: 1}
  assert stats["bad_records"] == expected
  assert stats["bad_records_skipped"] == len(BAD_LINES) + 2
  report = it.report()
  assert f"skipped {len(BAD_LINES) + 2} bad records" in report
  assert f"malformed_json: 2 ({a} x1, {b} x1)" in report
  line = 2 + sorted(BAD_LINES).index("missing_field")
  assert f"e.g. {a}:{line}: no field 'messages'" in report


def test_invalid_utf8_text_file(tmp_path, make_config):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "good.txt").write_text("fine text")
  (tmp_path / "docs" / "bad.txt").write_bytes(b"caf\xe9 latin-1")
  sources = {"t": {"kind": "text", "path": str(tmp_path / "docs"), "holdout": "none"}}
  with pytest.raises(DataError, match=r"bad.txt: bad record \(invalid_utf8"):
    run_all(make_config(sources=sources, seq_len=32, batch=1, epochs=1))
  batches, it = run_all(make_config(sources=sources, seq_len=32, batch=1, epochs=1, on_bad_record="skip"))
  assert documents(batches) == [("<|bos|>fine text<|eos|>", "fine text<|eos|>")]
  assert list(it.stats()["bad_records"]) == ["invalid_utf8"]


def test_overlong_policies(tmp_path, make_config, contract, jsonl):
  path = jsonl(tmp_path / "t.jsonl", [{"text": "x" * 30}, {"text": "short"}])

  def run(overlong, fmt="text"):
    return run_all(make_config(sources=source(path, fmt), seq_len=16, batch=2, epochs=1, overlong=overlong,
                               packing="none"))

  with pytest.raises(DataError, match=rf"{path}:1: 32 tokens > data.seq_len=16"):
    run("error")
  batches, it = run("drop")
  assert documents(batches) == [("<|bos|>short<|eos|>", "short<|eos|>")]
  assert it.stats()["dropped_overlong"] == 1
  batches, it = run("truncate")
  s = it.stats()
  assert s["truncated_documents"] == 1 and s["truncated_tokens"] == 16
  batches, it = run("split")  # 32 tokens -> two pieces of 16; every transition is learned once
  contract(batches[0], 2, 16, TOK.pad_id)
  assert it.stats()["documents"] == 2 and it.stats()["segments"] == 3
  assert it.stats()["loss_tokens"] == 31 + 6
  learned = np.concatenate([b["target_ids"][b["loss_mask"] > 0] for b in batches])
  assert sorted(TOK.decode(learned)) == sorted("x" * 30 + "<|eos|>" + "short<|eos|>")


def test_bad_rows_in_tables_name_the_row(tmp_path, make_config):
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = str(tmp_path / "t.parquet")
  pq.write_table(pa.table({"prompt": ["a", None, "c"], "completion": ["x", "y", "z"]}), path)
  sources = {"p": {"kind": "parquet", "path": path, "format": "prompt_completion", "holdout": "none"}}
  with pytest.raises(DataError, match=rf"{path} row 1: bad record \(missing_field: no field 'prompt'"):
    run_all(make_config(sources=sources, seq_len=32, batch=2, epochs=1))
  batches, it = run_all(make_config(sources=sources, seq_len=32, batch=2, epochs=1, on_bad_record="skip"))
  assert it.stats()["bad_records"] == {"missing_field": {path: 1}} and it.stats()["documents"] == 2
