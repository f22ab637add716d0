"""Every source kind builds a pipeline whose batches follow the contract; held-out split,
mixing, sharding and epochs."""

import gzip
import json

import numpy as np
import pytest

from jaxtrain.data import build_pipeline, write_tokens
from jaxtrain.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
TEXTS = [f"document number {i}: " + "lorem ipsum " * (i % 5) for i in range(40)]


def segments(batches):
  """Input texts of all segments (documents or their pieces), sorted."""
  out = []
  for b in batches:
    for r in range(b["input_ids"].shape[0]):
      for s in sorted(set(b["segment_ids"][r].tolist()) - {0}):
        out.append(TOK.decode(b["input_ids"][r][b["segment_ids"][r] == s]))
  return sorted(out)


def one_epoch(config, split="train", **kw):
  it = build_pipeline(config, split, **kw)
  return list(it), it


def expected_docs(texts):
  return sorted(f"<|bos|>{t}<|eos|>" for t in texts)


def check_source(make_config, contract, sources, texts, seq_len=128, batch=4):
  config = make_config(sources=sources, seq_len=seq_len, batch=batch, epochs=1)
  batches, it = one_epoch(config)
  for b in batches:
    contract(b, batch, seq_len, TOK.pad_id)
  assert segments(batches) == expected_docs(texts)
  assert it.stats()["documents"] == len(texts)
  # The training stream repeats forever by default.
  endless = build_pipeline(make_config(sources=sources, seq_len=seq_len, batch=batch), "train")
  for _ in range(len(batches) + 2):
    contract(next(endless), batch, seq_len, TOK.pad_id)


def test_python_stdlib_quickstart_corpus(make_config, contract):
  config = make_config(batch=4)
  assert config.data.sources.main.kind == "python_stdlib"
  train = build_pipeline(config, "train")
  first = next(train)
  contract(first, 4, 256, TOK.pad_id)
  assert np.array_equal(next(build_pipeline(config, "train"))["input_ids"], first["input_ids"])  # deterministic
  ev = build_pipeline(config, "eval")
  contract(next(ev), 4, 256, TOK.pad_id)
  from jaxtrain.data.pipeline import build_documents
  (_, _, train_src, _), = build_documents(config, "train", TOK)
  (_, _, eval_src, _), = build_documents(config, "eval", TOK)
  assert not set(train_src.paths) & set(eval_src.paths)  # whole files are held out
  assert 0.005 < len(eval_src.paths) / (len(train_src.paths) + len(eval_src.paths)) < 0.05
  assert TOK.decode(first["input_ids"][0]).isprintable() or "\n" in TOK.decode(first["input_ids"][0])


def test_text_files_dirs_and_lines(tmp_path, make_config, contract):
  d = tmp_path / "corpus"
  (d / "sub").mkdir(parents=True)
  for i, t in enumerate(TEXTS[:10]):
    (d / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(t)
  (d / "ignored.md").write_text("not matched by the default *.txt pattern")
  check_source(make_config, contract, {"t": {"kind": "text", "path": str(d), "holdout": "none"}}, TEXTS[:10])
  check_source(make_config, contract, {"t": {"kind": "text", "path": str(d / "*.md"), "holdout": "none"}},
               ["not matched by the default *.txt pattern"])
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(TEXTS[:12]) + "\n\n")
  check_source(make_config, contract, {"t": {"kind": "text", "path": str(lines), "text_unit": "line",
                                             "holdout": "none"}}, TEXTS[:12])


@pytest.mark.parametrize("compressed", [False, True])
def test_jsonl(tmp_path, make_config, contract, compressed):
  path = tmp_path / ("d.jsonl.gz" if compressed else "d.jsonl")
  data = "\r\n".join(json.dumps({"text": t}) for t in TEXTS).encode()
  path.write_bytes(gzip.compress(data) if compressed else data)
  check_source(make_config, contract, {"j": {"kind": "jsonl", "path": str(path), "holdout": "none"}}, TEXTS)


def test_parquet(tmp_path, make_config, contract):
  import pyarrow as pa
  import pyarrow.parquet as pq
  for k in range(2):
    pq.write_table(pa.table({"content": TEXTS[k::2], "n": list(range(20))}), tmp_path / f"part{k}.parquet",
                   row_group_size=7)
  check_source(make_config, contract,
               {"p": {"kind": "parquet", "path": str(tmp_path), "text_field": "content", "holdout": "none"}}, TEXTS)
  from jaxtrain.data import DataError
  with pytest.raises(DataError, match="no column 'text'.*content"):
    build_pipeline(make_config(sources={"p": {"kind": "parquet", "path": str(tmp_path)}}), "train")


def _write_arrow_stream(path, texts):
  import pyarrow as pa
  table = pa.table({"text": texts})
  with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table, max_chunksize=8)


def test_arrow_file_and_saved_datasets(tmp_path, make_config, contract):
  import pyarrow as pa
  table = pa.table({"text": TEXTS})
  with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
    writer.write_table(table)
  check_source(make_config, contract, {"a": {"kind": "arrow", "path": str(tmp_path / "d.arrow"),
                                             "holdout": "none"}}, TEXTS)
  # The layout `datasets.Dataset.save_to_disk` writes: streaming-format shards listed in state.json.
  ds_dir = tmp_path / "saved"
  ds_dir.mkdir()
  _write_arrow_stream(ds_dir / "data-00000-of-00002.arrow", TEXTS[:25])
  _write_arrow_stream(ds_dir / "data-00001-of-00002.arrow", TEXTS[25:])
  (ds_dir / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00002.arrow"},
                                                                 {"filename": "data-00001-of-00002.arrow"}]}))
  (ds_dir / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
  check_source(make_config, contract, {"a": {"kind": "arrow", "path": str(ds_dir), "holdout": "none"}}, TEXTS)
  # A saved DatasetDict: one directory per split.
  dd = tmp_path / "dict"
  (dd / "validation").mkdir(parents=True)
  _write_arrow_stream(dd / "validation" / "data-00000-of-00001.arrow", TEXTS[:5])
  state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
  (dd / "validation" / "state.json").write_text(json.dumps(state))
  (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["validation"]}))
  check_source(make_config, contract, {"a": {"kind": "arrow", "path": str(dd), "hf_split": "validation",
                                             "holdout": "none"}}, TEXTS[:5])


def test_pretokenized_tokens(tmp_path, make_config, contract):
  docs = [TOK.encode(t) + [TOK.eos_id] for t in TEXTS[:20]]
  write_tokens(str(tmp_path / "tok.npy"), docs)
  sources = {"k": {"kind": "tokens", "path": str(tmp_path / "tok.npy"), "holdout": "none"}}
  config = make_config(sources=sources, seq_len=32, batch=4, epochs=1)
  batches, it = one_epoch(config)
  for b in batches:
    contract(b, 4, 32, TOK.pad_id)
  # Long documents are cut into 32-token pieces; every transition is learned exactly once.
  learned = sum(int(b["loss_mask"].sum()) for b in batches)
  assert learned == sum(len(d) - 1 for d in docs)
  assert it.stats()["documents"] == 20
  # Without an offsets file, documents end at the tokenizer's eos; raw .bin files need a dtype.
  flat = np.concatenate(docs).astype(np.uint16)
  flat.tofile(tmp_path / "raw.bin")
  sources = {"k": {"kind": "tokens", "path": str(tmp_path / "raw.bin"), "token_dtype": "uint16",
                   "holdout": "none"}}
  batches, it = one_epoch(make_config(sources=sources, seq_len=128, batch=4, epochs=1))
  assert segments(batches) == sorted(TOK.decode(d) for d in docs)
  np.save(tmp_path / "big.npy", np.array([1, 2, 999], np.int32))
  from jaxtrain.data import DataError
  with pytest.raises(DataError, match="token id 999 is outside"):
    build_pipeline(make_config(sources={"k": {"kind": "tokens", "path": str(tmp_path / "big.npy")}}), "train")


def test_holdout_split_is_deterministic_and_disjoint(tmp_path, make_config):
  path = tmp_path / "d.jsonl"
  path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
  sources = {"j": {"kind": "jsonl", "path": str(path)}}
  config = make_config(sources=sources, seq_len=128, batch=4, epochs=1, eval_fraction=0.25)
  train = segments(one_epoch(config)[0])
  held = segments(one_epoch(config, "eval")[0])
  assert held == segments(one_epoch(config, "eval")[0])
  assert not set(train) & set(held) and sorted(train + held) == expected_docs(TEXTS)
  assert 4 <= len(held) <= 18
  # holdout=all: an eval-only source; holdout=none: train-only.
  sources = {"j": {"kind": "jsonl", "path": str(path), "holdout": "none"},
             "e": {"kind": "jsonl", "path": str(path), "holdout": "all"}}
  config = make_config(sources=sources, seq_len=128, batch=4, epochs=1)
  assert segments(one_epoch(config, "eval")[0]) == expected_docs(TEXTS)
  assert segments(one_epoch(config, "train")[0]) == expected_docs(TEXTS)
  assert one_epoch(config, "train")[1].stats()["documents_per_source"] == {"j": len(TEXTS)}


def test_mixing_weights(tmp_path, make_config):
  for name in "ab":
    (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": f"{name}{i}"}) for i in range(50)))
  sources = {n: {"kind": "jsonl", "path": str(tmp_path / f"{n}.jsonl"), "weight": w, "holdout": "none"}
             for n, w in (("a", 3.0), ("b", 1.0))}
  it = build_pipeline(make_config(sources=sources, seq_len=64, batch=4), "train")
  for _ in range(10):
    next(it)
  per = it.stats()["documents_per_source"]
  assert 2.0 < per["a"] / per["b"] < 4.5


def test_process_sharding_and_epochs(tmp_path, make_config, contract):
  path = tmp_path / "d.jsonl"
  path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
  sources = {"j": {"kind": "jsonl", "path": str(path), "holdout": "none"}}
  config = make_config(sources=sources, seq_len=128, batch=4, epochs=2)
  shards = []
  for p in range(2):
    batches, _ = one_epoch(config, process_index=p, process_count=2)
    for b in batches:
      contract(b, 2, 128, TOK.pad_id)
    shards.append(segments(batches))
  assert sorted(shards[0] + shards[1]) == sorted(expected_docs(TEXTS) * 2)  # every document, once per epoch
  from jaxtrain.config import ConfigError
  with pytest.raises(ConfigError, match="train.global_batch"):
    build_pipeline(config, "train", process_count=3)
