"""`metrics.jsonl`: one JSON object per logged step, written by process 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np

log = logging.getLogger("jaxtrain")


def to_python(value: Any) -> Any:
  arr = np.asarray(value)
  if arr.ndim == 0:
    item = arr.item()
    if isinstance(item, float) and not math.isfinite(item):
      return str(item)
    return item
  return [to_python(v) for v in arr]


class MetricsWriter:

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled
    if enabled and resume_step is not None and os.path.exists(self.path):
      self._truncate_after(resume_step)

  def _truncate_after(self, step: int) -> None:
    """On resume, lines logged after the restored checkpoint describe steps that will be
    re-run; they are dropped so the file stays one line per step of the surviving run."""
    with open(self.path) as f:
      lines = f.readlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
      log.info("metrics.jsonl: dropping %d lines logged after step %d (they will be recomputed)",
               len(lines) - len(kept), step)
      with open(self.path, "w") as f:
        f.writelines(kept)

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    record = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
