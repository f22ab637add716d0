"""Documents -> pieces -> packed rows -> batches that follow the batch contract.

A piece is `{"tokens": int32 [n, 3], "meta": dict}`: columns are (input id, target id, loss
mask), with the target of the document's last token masked out; pieces of one document are
independent segments (a split document's piece keeps its next token as the last target, since
the document goes on). Bad, empty or dropped records travel as zero-length pieces whose `meta`
says why, so every skip reaches the counters (Grain's packers carry `meta` as a non-sequence
meta feature), even across worker processes.

Packing uses Grain's `FirstFitPackIterDataset` / `BestFitPackIterDataset`, whose iterator state
restores exactly; `BatchAssembler` turns packed rows into the contract: `input_ids`,
`target_ids`, `loss_mask`, `segment_ids` (1.. per row, 0 = padding), `positions`, plus a
`_stats` delta the pipeline iterator folds into its counters.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxtrain.data.errors import DataError


def empty_piece(meta: dict) -> dict:
  return {"tokens": np.zeros((0, 3), np.int32), "meta": meta}


def document_pieces(ids: np.ndarray, learn: np.ndarray, pad_id: int, meta: dict, seq_len: int, overlong: str,
                    where: str) -> list[dict]:
  """One document (ids, learn) -> its pieces under the over-long policy."""
  n = len(ids)
  rows = np.empty((n, 3), np.int32)
  rows[:, 0] = ids
  rows[:-1, 1] = ids[1:]
  rows[-1, 1] = pad_id
  rows[:-1, 2] = learn[1:]
  rows[-1, 2] = 0
  if n <= seq_len:
    return [{"tokens": rows, "meta": meta}]
  if overlong == "split":
    pieces = []
    for k, start in enumerate(range(0, n, seq_len)):
      piece_meta = meta if k == 0 else {"src": meta["src"], "doc": 0}
      pieces.append({"tokens": rows[start:start + seq_len], "meta": piece_meta})
    return pieces
  if overlong == "truncate":
    return [{"tokens": rows[:seq_len], "meta": dict(meta, trunc=n - seq_len)}]
  if overlong == "drop":
    return [empty_piece(dict(meta, doc=0, drop=1))]
  raise DataError(f"{where}: {n} tokens > data.seq_len={seq_len} (data.overlong=error; use truncate, drop or "
                  "split, or raise data.seq_len)")


def resolve_overlong(overlong: str, fmt: str) -> str:
  if overlong != "auto":
    return overlong
  return "split" if fmt == "text" else "truncate"


def pack(ds, *, seq_len: int, method: str, bins: int, seed: int, shuffle_bins: bool,
         extra_lengths: dict[str, int] | None = None):
  """Grain packing of pieces into rows of `seq_len` tokens (and of `extra_lengths` for other
  packed features: a piece goes into a row only if every feature fits)."""
  from grain import experimental as gx

  cls = gx.BestFitPackIterDataset if method == "best_fit" else gx.FirstFitPackIterDataset
  lengths = {"tokens": seq_len, **(extra_lengths or {})}
  return cls(ds, length_struct=lengths, num_packing_bins=bins, seed=seed, shuffle_bins=shuffle_bins,
             meta_features=("meta",), max_sequences_per_bin=1 if method == "none" else None)


def _add(counter: dict, key: str, value: int = 1) -> None:
  counter[key] = counter.get(key, 0) + value


class BatchAssembler:
  """Grain `batch_fn`: packed rows -> the contract batch (+ `_stats`). Short final batches are
  padded with empty rows, so every batch is [batch_size, seq_len]."""

  def __init__(self, batch_size: int, seq_len: int, pad_id: int):
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id

  def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
    b, n = self.batch_size, self.seq_len
    tokens = np.zeros((b, n, 3), np.int32)
    segments = np.zeros((b, n), np.int32)
    positions = np.zeros((b, n), np.int32)
    stats: dict[str, Any] = {"batches": 1, "rows": len(rows), "slots": b * n}
    for i, row in enumerate(rows):
      tokens[i] = row["tokens"]
      segments[i] = row["tokens_segment_ids"]
      positions[i] = row["tokens_positions"]
      for meta in row["meta"]:
        self._count(meta, stats)
    real = segments > 0
    # Renumber segments 1..k per row (skipped records leave gaps in Grain's numbering).
    starts = np.concatenate([real[:, :1], (segments[:, 1:] != segments[:, :-1]) & real[:, 1:]], axis=1)
    segments = (np.cumsum(starts, axis=1) * real).astype(np.int32)
    batch = {
        "input_ids": np.where(real, tokens[..., 0], self.pad_id).astype(np.int32),
        "target_ids": np.where(real, tokens[..., 1], self.pad_id).astype(np.int32),
        "loss_mask": np.where(real, tokens[..., 2], 0).astype(np.int32),
        "segment_ids": segments,
        "positions": np.where(real, positions, 0).astype(np.int32),
    }
    stats["tokens"] = int(real.sum())
    stats["loss_tokens"] = int(batch["loss_mask"].sum())
    stats["segments"] = int(starts.sum())
    batch["_stats"] = stats
    return batch

  @staticmethod
  def _count(meta: dict, stats: dict) -> None:
    if meta.get("doc"):
      _add(stats, "documents")
      per = stats.setdefault("documents_per_source", {})
      per[meta["src"]] = per.get(meta["src"], 0) + 1
    if meta.get("trunc"):
      _add(stats, "truncated_documents")
      _add(stats, "truncated_tokens", meta["trunc"])
    if meta.get("drop"):
      _add(stats, "dropped_overlong")
    if meta.get("empty"):
      _add(stats, "empty_documents")
    if meta.get("bad"):
      stats.setdefault("bad", []).append(meta["bad"])
