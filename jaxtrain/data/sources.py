"""Random-access document sources (Grain `RandomAccessDataSource`s).

Each source indexes its files once (in the building process), keeps only the documents of the
requested split, and reads a document lazily by index: `source[i] -> (payload, file, where)`,
where `where` names the file and line (or row) for error messages. File handles and tables are
opened lazily per process, so sources pickle cheaply into Grain worker processes.

Kinds: python_stdlib (this interpreter's own *.py files: a corpus every install has), text
(one document per file or per line), jsonl (.gz allowed), parquet, arrow (IPC files or a
`datasets.save_to_disk` directory), tokens (pre-tokenized, memory-mapped).

The held-out split and file handling live in `files.py`; pre-tokenized sources in `tokens.py`;
`kinds.py` picks the source class for a config entry.
"""

from __future__ import annotations

import collections
import functools
import glob
import io
import json
import os
import re
import threading
import tokenize
from typing import Any, Sequence

import numpy as np

from jaxtrain.data.errors import DataError
from jaxtrain.data.files import Buffers, holdout_scores, line_spans, list_files, read_buffer, select_split

class Source:
  """Base: `__len__`, `__getitem__(i) -> (payload, file, where)`, plus bookkeeping."""

  name: str
  kind: str
  index_stats: dict  # what indexing dropped or changed (tokens sources), reported in stats()

  def __len__(self) -> int:
    raise NotImplementedError

  def __getitem__(self, i: int):
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, {len(self)} documents)"


class FileDocSource(Source):
  """One document per file (kind=text). Payload: bytes, decoded strictly by the format step."""

  def __init__(self, name: str, kind: str, files: Sequence[tuple[str, str]], split: str, holdout: str,
               fraction: float):
    self.name, self.kind, self.index_stats = name, kind, {}
    scores = holdout_scores([n for _, n in files], np.arange(len(files)), np.zeros(len(files), np.int64))
    self.files = [files[i] for i in select_split(scores, holdout, fraction, split)]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int):
    path, _ = self.files[i]
    with open(path, "rb") as f:
      return f.read(), path, path


def read_python_source(path: str) -> str:
  """A Python file's text, decoded per its coding cookie (undecodable bytes replaced)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
  except SyntaxError:
    encoding = "utf-8"
  try:
    return data.decode(encoding, errors="replace")
  except LookupError:
    return data.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=8)
def stdlib_files(root: str) -> tuple[tuple[str, str], ...]:
  return tuple(list_files(root, "*.py", "data.sources.*.path"))


# A chunk starts at a definition (def / class / decorator, at any indentation) after a blank line.
_DEFINITION = re.compile(r"\n[ \t]*\n(?=[ \t]*(?:@|def |class |async def ))")


@functools.lru_cache(maxsize=8)
def python_chunks(files: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, ...]:
  """(file index, start, end, first line) character spans of the definition-level chunks of Python files."""
  file_idx, starts, ends, lines = [], [], [], []
  for f, (path, _) in enumerate(files):
    text = read_python_source(path)
    cuts = np.array([0] + [m.end() for m in _DEFINITION.finditer(text)] + [len(text)], np.int64)
    first_line = np.cumsum([1] + [text.count("\n", a, b) for a, b in zip(cuts[:-2], cuts[1:-1])])
    keep = cuts[1:] > cuts[:-1]
    file_idx.append(np.full(int(keep.sum()), f, np.int32))
    starts.append(cuts[:-1][keep])
    ends.append(cuts[1:][keep])
    lines.append(first_line[keep])
  cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
  return cat(file_idx, np.int32), cat(starts, np.int64), cat(ends, np.int64), cat(lines, np.int64)


class PythonSource(Source):
  """kind=python_stdlib: the standard library's *.py files (every Python install has them, so
  the quickstart needs no network and ships no data), one document per definition-level chunk
  (module header, each def / class / decorated block after a blank line). Whole files are held
  out together (hash of the file's path relative to the stdlib root). Payload: str."""

  def __init__(self, name: str, files: Sequence[tuple[str, str]], split: str, holdout: str, fraction: float):
    self.name, self.kind, self.index_stats = name, "python_stdlib", {}
    scores = holdout_scores([n for _, n in files], np.arange(len(files)), np.zeros(len(files), np.int64))
    self.paths = [files[i][0] for i in select_split(scores, holdout, fraction, split)]
    self.file_idx, self.start, self.end, self.line = python_chunks(tuple((p, "") for p in self.paths))
    self._texts: collections.OrderedDict[int, str] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_texts"], state["_lock"] = collections.OrderedDict(), None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.start)

  def __getitem__(self, i: int):
    f = int(self.file_idx[i])
    with self._lock:
      text = self._texts.get(f)
    if text is None:
      text = read_python_source(self.paths[f])
      with self._lock:
        self._texts[f] = text
        while len(self._texts) > 64:
          self._texts.popitem(last=False)
    a, b = int(self.start[i]), int(self.end[i])
    return text[a:b], self.paths[f], f"{self.paths[f]}:{int(self.line[i])}"


@functools.lru_cache(maxsize=64)
def _index_lines(path: str, size: int, mtime: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  del size, mtime  # cache keys
  data = read_buffer(path)
  starts, ends = line_spans(data)
  lineno = np.arange(1, len(starts) + 1, dtype=np.int64)
  nonblank = ends > starts
  return starts[nonblank], ends[nonblank], lineno[nonblank]


class LineSource(Source):
  """One record per non-empty line (jsonl, or text with text_unit=line). Payload: bytes."""

  def __init__(self, name: str, kind: str, files: Sequence[tuple[str, str]], split: str, holdout: str,
               fraction: float):
    self.name, self.kind, self.index_stats = name, kind, {}
    parts = []
    for f, (path, _) in enumerate(files):
      st = os.stat(path)
      starts, ends, lineno = _index_lines(path, st.st_size, st.st_mtime)
      parts.append((np.full(len(starts), f, np.int32), starts, ends, lineno))
    file_idx, starts, ends, lineno = (np.concatenate([p[k] for p in parts]) for k in range(4))
    scores = holdout_scores([n for _, n in files], file_idx, lineno)
    keep = select_split(scores, holdout, fraction, split)
    self.file_idx, self.starts, self.ends, self.lineno = file_idx[keep], starts[keep], ends[keep], lineno[keep]
    self.paths = [p for p, _ in files]
    self._buffers = Buffers(self.paths)

  def __len__(self) -> int:
    return len(self.starts)

  def __getitem__(self, i: int):
    f = int(self.file_idx[i])
    data = self._buffers.get(f)
    path = self.paths[f]
    return bytes(data[int(self.starts[i]):int(self.ends[i])]), path, f"{path}:{int(self.lineno[i])}"


class _TableSource(Source):
  """Rows of Arrow tables (parquet, arrow). Payload: dict of the needed columns."""

  def __init__(self, name: str, kind: str, files: Sequence[tuple[str, str]], split: str, holdout: str,
               fraction: float, required: Sequence[str], optional: Sequence[str], key: str):
    self.name, self.kind, self.index_stats = name, kind, {}
    self.paths = [p for p, _ in files]
    counts, self.columns = [], []
    for path in self.paths:
      rows, names = self._describe(path)
      missing = [c for c in required if c not in names]
      if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); set the source's "
                        f"field names in config {key}")
      counts.append(rows)
      self.columns.append([c for c in list(required) + list(optional) if c in names])
    file_idx = np.repeat(np.arange(len(self.paths), dtype=np.int32), counts)
    row = np.concatenate([np.arange(n, dtype=np.int64) for n in counts]) if counts else np.zeros(0, np.int64)
    keep = select_split(holdout_scores([n for _, n in files], file_idx, row), holdout, fraction, split)
    self.file_idx, self.row = file_idx[keep], row[keep]
    self._tables: dict[int, Any] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_tables"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.row)

  def _table(self, f: int):
    with self._lock:
      table = self._tables.get(f)
    if table is None:
      table = self._load(self.paths[f], self.columns[f])
      with self._lock:
        self._tables[f] = table
    return table

  def __getitem__(self, i: int):
    f, r = int(self.file_idx[i]), int(self.row[i])
    table = self._table(f)
    record = {c: table.column(c)[r].as_py() for c in self.columns[f]}
    return record, self.paths[f], f"{self.paths[f]} row {r}"


class ParquetSource(_TableSource):

  @staticmethod
  def _describe(path):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    return pf.metadata.num_rows, pf.schema_arrow.names

  @staticmethod
  def _load(path, columns):
    import pyarrow.parquet as pq
    return pq.read_table(path, columns=columns, memory_map=True)


def arrow_files(path: str, hf_split: str, key: str) -> list[str]:
  """An .arrow file, or the data files of a `datasets.save_to_disk` directory (a DatasetDict
  directory picks `hf_split`)."""
  if os.path.isfile(path):
    return [path]
  if os.path.exists(os.path.join(path, "dataset_dict.json")):
    with open(os.path.join(path, "dataset_dict.json")) as f:
      splits = json.load(f).get("splits", [])
    if hf_split not in splits:
      raise DataError(f"config {key}.hf_split: {hf_split!r} is not a split of {path} (splits: {splits})")
    path = os.path.join(path, hf_split)
  state = os.path.join(path, "state.json")
  if os.path.exists(state):
    with open(state) as f:
      files = [d["filename"] for d in json.load(f).get("_data_files", [])]
    return [os.path.join(path, name) for name in files]
  return sorted(glob.glob(os.path.join(path, "*.arrow")))


def _open_arrow(path: str):
  import pyarrow as pa
  source = pa.memory_map(path, "r")
  try:
    return pa.ipc.open_file(source).read_all()
  except pa.ArrowInvalid:
    source = pa.memory_map(path, "r")
    return pa.ipc.open_stream(source).read_all()  # datasets writes the streaming format


class ArrowSource(_TableSource):

  @staticmethod
  def _describe(path):
    table = _open_arrow(path)
    return table.num_rows, table.column_names

  @staticmethod
  def _load(path, columns):
    return _open_arrow(path).select(columns)
