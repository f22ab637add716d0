"""Counters of what a pipeline consumed, packed and skipped (JSON-serialisable, resumable)."""

from __future__ import annotations

import copy
from typing import Any

EXAMPLES_PER_REASON = 5
_COUNTS = ("batches", "rows", "slots", "tokens", "loss_tokens", "segments", "documents", "truncated_documents",
           "truncated_tokens", "dropped_overlong", "empty_documents", "images", "videos", "vision_items", "patches",
           "patch_slots")


class PipelineStats:

  def __init__(self):
    self.counts = {k: 0 for k in _COUNTS}
    self.documents_per_source: dict[str, int] = {}
    self.bad: dict[str, dict[str, int]] = {}  # reason -> file -> count
    self.examples: dict[str, list[str]] = {}  # reason -> ["where: detail", ...]

  def add(self, delta: dict[str, Any]) -> None:
    for k in _COUNTS:
      self.counts[k] += delta.get(k, 0)
    for src, n in delta.get("documents_per_source", {}).items():
      self.documents_per_source[src] = self.documents_per_source.get(src, 0) + n
    for reason, file, where, detail in delta.get("bad", ()):
      per_file = self.bad.setdefault(reason, {})
      per_file[file] = per_file.get(file, 0) + 1
      examples = self.examples.setdefault(reason, [])
      if len(examples) < EXAMPLES_PER_REASON:
        examples.append(f"{where}: {detail}" if detail else where)

  @property
  def bad_records(self) -> int:
    return sum(n for per_file in self.bad.values() for n in per_file.values())

  def state(self) -> dict:
    return copy.deepcopy({"counts": self.counts, "documents_per_source": self.documents_per_source,
                          "bad": self.bad, "examples": self.examples})

  @classmethod
  def from_state(cls, state: dict) -> "PipelineStats":
    stats = cls()
    stats.counts.update(state.get("counts", {}))
    stats.documents_per_source = dict(state.get("documents_per_source", {}))
    stats.bad = {r: dict(f) for r, f in state.get("bad", {}).items()}
    stats.examples = {r: list(e) for r, e in state.get("examples", {}).items()}
    return stats

  def summary(self, index_stats: dict[str, int] | None = None) -> dict[str, Any]:
    c = dict(self.counts)
    for k, v in (index_stats or {}).items():
      c[k] = c.get(k, 0) + v
    return {
        **c,
        "packing_efficiency": c["tokens"] / c["slots"] if c["slots"] else 0.0,
        "documents_per_source": dict(self.documents_per_source),
        "bad_records_skipped": self.bad_records,
        "bad_records": {r: dict(f) for r, f in self.bad.items()},
        "bad_record_examples": {r: list(e) for r, e in self.examples.items()},
    }


def report(summary: dict[str, Any], name: str = "data") -> str:
  """Human-readable lines: what was read and packed, and every kind of skip."""
  lines = [f"{name}: {summary['documents']} documents, {summary['tokens']} tokens "
           f"({summary['loss_tokens']} with loss) in {summary['batches']} batches; "
           f"packing efficiency {100 * summary['packing_efficiency']:.1f}%"]
  if summary.get("patch_slots"):
    lines.append(f"{name}: {summary['images']} images, {summary['videos']} videos, {summary['vision_items']} vision "
                 f"items, {summary['patches']} pixel patches ({100 * summary['patches'] / summary['patch_slots']:.1f}% "
                 "of the pixel_values slots)")
  per_source = summary.get("documents_per_source") or {}
  if len(per_source) > 1:
    lines.append(f"{name}: documents per source: " + ", ".join(f"{k}={v}" for k, v in sorted(per_source.items())))
  if summary.get("truncated_documents"):
    lines.append(f"{name}: truncated {summary['truncated_documents']} over-long documents "
                 f"({summary['truncated_tokens']} tokens cut; data.overlong)")
  if summary.get("dropped_overlong"):
    lines.append(f"{name}: dropped {summary['dropped_overlong']} over-long documents (data.overlong=drop)")
  if summary.get("empty_documents"):
    lines.append(f"{name}: skipped {summary['empty_documents']} empty documents")
  if summary["bad_records_skipped"]:
    lines.append(f"{name}: skipped {summary['bad_records_skipped']} bad records (data.on_bad_record=skip):")
    for reason, per_file in sorted(summary["bad_records"].items()):
      files = ", ".join(f"{f} x{n}" for f, n in sorted(per_file.items()))
      lines.append(f"  {reason}: {sum(per_file.values())} ({files})")
      for example in summary["bad_record_examples"].get(reason, []):
        lines.append(f"    e.g. {example}")
  return "\n".join(lines)
