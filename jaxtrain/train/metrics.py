"""Where a run's metrics go: `metrics.jsonl` (one JSON object per logged step), and the same
records as TensorBoard events and, if enabled, Weights & Biases (`logging` config section).
Process 0 writes; the other processes' writers are disabled."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np

from jaxtrain.train import sinks

log = logging.getLogger("jaxtrain")


def to_python(value: Any) -> Any:
  """A JSON-ready value: numbers, nested lists of numbers, "nan"/"inf" strings. float32 values
  are written with the shortest text that reads back as the same float32."""
  arr = np.asarray(value)
  if arr.ndim == 0:
    item = float(str(arr)) if arr.dtype == np.float32 else arr.item()
    if isinstance(item, float) and not math.isfinite(item):
      return str(item)
    return item
  return [to_python(v) for v in arr]


class JsonlSink:

  def __init__(self, workdir: str, resume_step: int | None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(self.path):
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

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self) -> None:
    pass


class MetricsWriter:
  """Fans each record out to metrics.jsonl and the sinks the `logging` section enables.

  `settings`: the run config's `logging` section (None = metrics.jsonl only); `config`: the
  whole run config, given to W&B as the run's config."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int | None = None, settings=None,
               config=None):
    self.enabled = enabled
    self.sinks = []
    if not enabled:
      return
    self.sinks.append(JsonlSink(workdir, resume_step))
    if settings is not None:
      if settings.tensorboard:
        self.sinks.append(sinks.TensorBoardSink(workdir, resume_step))
      if settings.wandb.enabled and settings.wandb.mode != "disabled":
        self.sinks.append(sinks.WandbSink(workdir, settings.wandb, config, resume_step))

  def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    record = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
    for sink in self.sinks:
      sink.write(record)
    return record

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()
    self.sinks = []


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
