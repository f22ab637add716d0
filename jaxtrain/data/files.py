"""Files of a source, the held-out split, and lazily opened file contents.

`list_files` expands a source's `path` (files, directories, globs; comma-separated) into sorted
(path, name) pairs, `name` being relative to the given root, so the held-out split does not
depend on where the data lives. A document is held out when a hash of (file name, record index)
falls below `data.eval_fraction`: stable across machines, file order and paths.
"""

from __future__ import annotations

import collections
import fnmatch
import glob
import gzip
import mmap
import os
import threading
import zlib
from typing import Any, Sequence

import numpy as np

from jaxtrain.data.errors import DataError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def list_files(spec: str, pattern: str, key: str) -> list[tuple[str, str]]:
  """`spec`: files, directories or globs separated by commas -> sorted [(path, name)], where
  `name` is the path relative to the directory or glob root (the basename for a single file)."""
  out: list[tuple[str, str]] = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    part = os.path.expanduser(part)
    if any(c in part for c in "*?["):
      root = os.path.dirname(part.split("*")[0].split("?")[0].split("[")[0]) or "."
      found = sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
      out += [(p, os.path.relpath(p, root)) for p in found]
    elif os.path.isdir(part):
      if os.path.exists(os.path.join(part, "state.json")) or os.path.exists(os.path.join(part, "dataset_dict.json")):
        out.append((part, os.path.basename(os.path.normpath(part))))  # a datasets directory
        continue
      for dirpath, dirnames, filenames in os.walk(part):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
          if fnmatch.fnmatch(f, pattern):
            path = os.path.join(dirpath, f)
            out.append((path, os.path.relpath(path, part)))
    elif os.path.isfile(part):
      out.append((part, os.path.basename(part)))
    else:
      raise DataError(f"config {key}: {part!r} does not exist")
  if not out:
    raise DataError(f"config {key}: {spec!r} matches no files (pattern {pattern!r})")
  out.sort(key=lambda t: (t[1], t[0]))
  return out


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a well-mixed uint64 hash of uint64 keys (vectorised)."""
  x = x.astype(np.uint64)
  with np.errstate(over="ignore"):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def holdout_scores(names: Sequence[str], file_idx: np.ndarray, record_idx: np.ndarray) -> np.ndarray:
  """A number in [0, 1) per document, from (file name, record index in the file)."""
  crc = np.array([zlib.crc32(n.encode("utf-8")) for n in names], dtype=np.uint64)
  keys = (crc[np.asarray(file_idx, dtype=np.int64)] << np.uint64(32)) ^ np.asarray(record_idx).astype(np.uint64)
  return (_mix64(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def select_split(scores: np.ndarray, holdout: str, fraction: float, split: str) -> np.ndarray:
  """Indices of the documents in `split`. With holdout=hash and at least two documents, each
  split keeps at least one (the extreme scores), so small files still have a held-out part."""
  n = len(scores)
  if holdout == "none":
    is_eval = np.zeros(n, bool)
  elif holdout == "all":
    is_eval = np.ones(n, bool)
  else:
    is_eval = scores < fraction
    if fraction > 0 and n >= 2:
      if not is_eval.any():
        is_eval[np.argmin(scores)] = True
      if is_eval.all():
        is_eval[np.argmax(scores)] = False
  return np.flatnonzero(is_eval if split == "eval" else ~is_eval)


# ---------------------------------------------------------------------------------------------
# Lazily opened, per-process file contents


class Buffers:
  """A small per-process LRU of opened files (mmap, or decompressed bytes for .gz)."""

  def __init__(self, paths: Sequence[str], capacity: int = 32):
    self.paths = list(paths)
    self.capacity = capacity
    self._open: collections.OrderedDict[int, Any] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"paths": self.paths, "capacity": self.capacity}

  def __setstate__(self, state):
    self.__init__(state["paths"], state["capacity"])

  def get(self, i: int):
    with self._lock:
      if i in self._open:
        self._open.move_to_end(i)
        return self._open[i]
    data = read_buffer(self.paths[i])
    with self._lock:
      self._open[i] = data
      while len(self._open) > self.capacity:
        self._open.popitem(last=False)
    return data


def read_buffer(path: str):
  if path.endswith(".gz"):
    with gzip.open(path, "rb") as f:
      return f.read()
  if os.path.getsize(path) == 0:
    return b""
  with open(path, "rb") as f:
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def line_spans(data) -> tuple[np.ndarray, np.ndarray]:
  """(start, end) byte offsets of the lines of `data` (without '\\n' / '\\r\\n')."""
  arr = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
  chunk = 1 << 26
  newlines = [np.flatnonzero(arr[o:o + chunk] == 10) + o for o in range(0, len(arr), chunk)]
  nl = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
  starts = np.concatenate([[0], nl + 1]).astype(np.int64)
  ends = np.concatenate([nl, [len(arr)]]).astype(np.int64)
  if len(starts) and starts[-1] == len(arr):  # no line after the final newline
    starts, ends = starts[:-1], ends[:-1]
  cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13) if len(arr) else np.zeros(len(ends), bool)
  ends = ends - cr.astype(np.int64)
  return starts, ends
