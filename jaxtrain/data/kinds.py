"""A `data.sources.<name>` config entry -> the `Source` that reads its kind of files."""

from __future__ import annotations

import os
import sysconfig
from typing import Any

from jaxtrain.data.errors import DataError
from jaxtrain.data.files import list_files
from jaxtrain.data.sources import (
  ArrowSource,
  FileDocSource,
  LineSource,
  ParquetSource,
  PythonSource,
  Source,
  arrow_files,
  stdlib_files,
)
from jaxtrain.data.tokens import TokenSource

DEFAULT_GLOBS = {"python_stdlib": "*.py", "text": "*.txt", "jsonl": "*.jsonl*", "parquet": "*.parquet",
                 "arrow": "*.arrow", "tokens": "*.npy"}


def required_fields(entry: Any) -> tuple[list[str], list[str]]:
  """(required, optional) record fields of a source's format."""
  fmt = entry.format
  if fmt == "text":
    return [entry.text_field], []
  if fmt == "chat":
    return [entry.messages_field], [entry.tools_field]
  if fmt == "prompt":
    return [entry.prompt_field], []
  if fmt == "prompt_completion":
    return [entry.prompt_field, entry.completion_field], []
  if fmt == "preference":
    return [entry.chosen_field, entry.rejected_field], [entry.prompt_field, entry.ref_chosen_field,
                                                        entry.ref_rejected_field]
  return [entry.instruction_field, entry.output_field], [entry.input_field]


def open_source(name: str, entry: Any, split: str, *, eval_fraction: float, seq_len: int, overlong: str,
                tokenizer: Any) -> Source:
  """Builds the source `data.sources.<name>` for `split` ("train" or "eval")."""
  key = f"data.sources.{name}"
  pattern = entry.glob or DEFAULT_GLOBS[entry.kind]
  args = dict(split=split, holdout=entry.holdout, fraction=eval_fraction)
  if entry.kind == "python_stdlib":
    root = entry.path or sysconfig.get_paths()["stdlib"]
    files = list(stdlib_files(root)) if not entry.glob else list_files(root, entry.glob, f"{key}.path")
    return PythonSource(name, files, **args)
  if entry.kind == "text":
    files = list_files(entry.path, pattern, f"{key}.path")
    if entry.text_unit == "line":
      return LineSource(name, "text", files, **args)
    return FileDocSource(name, "text", files, **args)
  if entry.kind == "jsonl":
    return LineSource(name, "jsonl", list_files(entry.path, pattern, f"{key}.path"), **args)
  required, optional = required_fields(entry)
  if entry.kind == "parquet":
    return ParquetSource(name, "parquet", list_files(entry.path, pattern, f"{key}.path"), required=required,
                         optional=optional, key=key, **args)
  if entry.kind == "arrow":
    files = []
    for path, rel in list_files(entry.path, pattern, f"{key}.path"):
      files += [(p, os.path.join(rel, os.path.basename(p))) for p in arrow_files(path, entry.hf_split, key)]
    if not files:
      raise DataError(f"config {key}.path: {entry.path!r} holds no .arrow files")
    return ArrowSource(name, "arrow", files, required=required, optional=optional, key=key, **args)
  if entry.kind == "tokens":
    files = list_files(entry.path, pattern, f"{key}.path")
    files = [(p, n) for p, n in files if not p.endswith(".offsets.npy")]
    return TokenSource(name, files, dtype=entry.token_dtype, eos_id=tokenizer.eos_id,
                       vocab_size=tokenizer.vocab_size, seq_len=seq_len, overlong=overlong, **args)
  raise DataError(f"config {key}.kind: unknown kind {entry.kind!r}")
