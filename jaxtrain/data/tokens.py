"""Pre-tokenized documents: a 1-D token file (.npy, memory-mapped, or raw .bin) plus optional
document offsets (`<stem>.offsets.npy`); without offsets, documents end after each eos token.

Over-long documents are cut into `seq_len` pieces at index time (overlong=split), so the global
shuffle mixes pieces of long documents; truncate / drop / error apply here too.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import numpy as np

from jaxtrain.data.errors import DataError
from jaxtrain.data.files import holdout_scores, select_split
from jaxtrain.data.sources import Source


@functools.lru_cache(maxsize=16)
def _scan_tokens(path: str, size: int, mtime: float, dtype: str, eos_id: int):
  """(document boundaries, max token id) of a token file. Boundaries come from
  `<stem>.offsets.npy` when present, else after every eos token."""
  del size, mtime
  tokens = load_tokens(path, dtype)
  offsets_path = token_offsets_path(path)
  has_offsets = os.path.exists(offsets_path)
  chunk = 1 << 24
  top, cuts = -1, []
  for o in range(0, len(tokens), chunk):
    part = np.asarray(tokens[o:o + chunk])
    top = max(top, int(part.max()))
    if int(part.min()) < 0:
      raise DataError(f"{path}: negative token id at or after position {o}")
    if eos_id >= 0 and not has_offsets:
      cuts.append(np.flatnonzero(part == eos_id) + o + 1)
  if has_offsets:
    bounds = np.load(offsets_path).astype(np.int64)
    if len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != len(tokens) or np.any(np.diff(bounds) < 0):
      raise DataError(f"{offsets_path}: must be non-decreasing document offsets from 0 to {len(tokens)}")
  else:
    inner = np.concatenate(cuts) if cuts else np.zeros(0, np.int64)
    bounds = np.unique(np.concatenate([[0], inner, [len(tokens)]]).astype(np.int64))
  return bounds, top


def token_offsets_path(path: str) -> str:
  stem = path[:-4] if path.endswith((".npy", ".bin")) else path
  return stem + ".offsets.npy"


def load_tokens(path: str, dtype: str = "int32") -> np.ndarray:
  if path.endswith(".npy"):
    tokens = np.load(path, mmap_mode="r")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
      raise DataError(f"{path}: a token file must hold a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    return tokens
  return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def write_tokens(path: str, documents: Sequence[Sequence[int]], dtype: str = "int32") -> None:
  """Writes pre-tokenized documents as `path` (.npy) plus `<stem>.offsets.npy`."""
  docs = [np.asarray(d, dtype=dtype) for d in documents]
  tokens = np.concatenate(docs) if docs else np.zeros(0, dtype)
  np.save(path, tokens)
  np.save(token_offsets_path(path), np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64))


def _cut_pieces(starts, ends, seq_len, overlong, path, doc, stats):
  """Documents [start, end) -> pieces (start, end, document end, first piece?) per `overlong`."""
  lengths = ends - starts
  long = lengths > seq_len
  if overlong == "error" and long.any():
    i = int(np.argmax(long))
    raise DataError(f"{path}: document {int(doc[i])} has {int(lengths[i])} tokens > data.seq_len={seq_len} "
                    "(data.overlong=error)")
  if overlong == "drop":
    stats["dropped_overlong"] += int(long.sum())
    starts, ends = starts[~long], ends[~long]
    return starts, ends, ends, np.ones(len(starts), bool)
  if overlong == "truncate":
    stats["truncated_documents"] += int(long.sum())
    stats["truncated_tokens"] += int((lengths[long] - seq_len).sum())
    # The piece keeps the document's next token as its last target (the document goes on).
    return starts, np.minimum(ends, starts + seq_len), ends, np.ones(len(starts), bool)
  count = -(-lengths // seq_len)  # split
  owner = np.repeat(np.arange(len(starts)), count)
  k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
  piece_start = starts[owner] + k * seq_len
  return piece_start, np.minimum(piece_start + seq_len, ends[owner]), ends[owner], k == 0


class TokenSource(Source):
  """Pre-tokenized documents, memory-mapped. Over-long documents are cut into `seq_len` pieces
  here (overlong=split), so the global shuffle mixes pieces. Payload:
  (tokens, next token or -1 at the document's end, first piece of its document?)."""

  def __init__(self, name: str, files: Sequence[tuple[str, str]], split: str, holdout: str, fraction: float,
               dtype: str, eos_id: int | None, vocab_size: int, seq_len: int, overlong: str):
    self.name, self.kind, self.dtype = name, "tokens", dtype
    self.paths = [p for p, _ in files]
    self.index_stats = {"truncated_documents": 0, "truncated_tokens": 0, "dropped_overlong": 0}
    pieces = []
    for f, path in enumerate(self.paths):
      st = os.stat(path)
      bounds, top = _scan_tokens(path, st.st_size, st.st_mtime, dtype, -1 if eos_id is None else int(eos_id))
      if top >= vocab_size:
        raise DataError(f"{path}: token id {top} is outside the tokenizer's vocabulary ({vocab_size})")
      starts, ends = bounds[:-1], bounds[1:]
      nonempty = ends > starts
      doc = np.flatnonzero(nonempty)
      starts, ends = starts[nonempty], ends[nonempty]
      scores = holdout_scores([files[f][1]], np.zeros(len(doc), np.int64), doc)
      keep = select_split(scores, holdout, fraction, split)
      starts, ends, doc = starts[keep], ends[keep], doc[keep]
      pieces.append((f, *_cut_pieces(starts, ends, seq_len, overlong, path, doc, self.index_stats)))
    self.file_idx = np.concatenate([np.full(len(p[1]), p[0], np.int32) for p in pieces] or [np.zeros(0, np.int32)])
    self.start, self.end, self.doc_end, self.first = (
        np.concatenate([p[k] for p in pieces]) if pieces else np.zeros(0, np.int64) for k in range(1, 5))
    self._tokens: dict[int, np.ndarray] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_tokens"] = {}
    return state

  def __len__(self) -> int:
    return len(self.start)

  def __getitem__(self, i: int):
    f = int(self.file_idx[i])
    tokens = self._tokens.get(f)
    if tokens is None:
      tokens = self._tokens[f] = load_tokens(self.paths[f], self.dtype)
    a, b, end = int(self.start[i]), int(self.end[i]), int(self.doc_end[i])
    piece = np.asarray(tokens[a:b], dtype=np.int32)
    nxt = int(tokens[b]) if b < end else -1
    return (piece, nxt, bool(self.first[i])), self.paths[f], f"{self.paths[f]} tokens [{a}, {b})"
