"""Metric sinks beside metrics.jsonl: TensorBoard event files (tensorboardX) and Weights & Biases.

Both receive the records metrics.jsonl gets and show the same values:
- a number is a scalar under its own name (`loss`, `moe/aux_loss`, `eval_loss`, ...);
- a list of numbers (one per MoE layer: `moe/load_cv`, ...) is one scalar per layer,
  `NAME/layer_I`;
- a list of lists (`moe/expert_load`: per layer, the fraction of routed token copies each expert
  received) is one histogram per layer, `NAME/layer_I`, over the expert index: bucket e holds
  expert e's share, so TensorBoard's histogram tab shows the load of every expert over time.
Non-finite values ("nan", "inf" in metrics.jsonl) are written as floats.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import numpy as np

from jaxtrain.config import ConfigError

log = logging.getLogger("jaxtrain")

TENSORBOARD_DIR = "tensorboard"  # under the workdir; profiler traces go here too
WANDB_ID_FILE = "wandb_run_id"  # under the workdir: a resumed run continues the same W&B run


def _number(value: Any) -> float | None:
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    try:
      return float(value)  # "nan", "inf", "-inf"
    except ValueError:
      return None
  return None


def flatten(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
  """(scalars, per-index distributions) of one metrics.jsonl record, by tag."""
  scalars: dict[str, float] = {}
  distributions: dict[str, list[float]] = {}
  for key, value in record.items():
    if key == "step":
      continue
    if isinstance(value, list):
      for i, item in enumerate(value):
        tag = f"{key}/layer_{i}"
        if isinstance(item, list):
          distributions[tag] = [_number(x) for x in item]
        elif _number(item) is not None:
          scalars[tag] = _number(item)
    elif _number(value) is not None:
      scalars[key] = _number(value)
  return scalars, distributions


def index_histogram(shares: list[float]) -> dict[str, Any]:
  """A histogram over indices 0..n-1 whose bucket i holds `shares[i]` (TensorBoard's raw
  histogram fields: bucket i spans (i - 0.5, i + 0.5])."""
  counts = np.nan_to_num(np.asarray(shares, np.float64))
  index = np.arange(len(counts), dtype=np.float64)
  return {"min": 0.0, "max": float(len(counts) - 1), "num": float(counts.sum()),
          "sum": float((index * counts).sum()), "sum_squares": float((index * index * counts).sum()),
          "bucket_limits": (index + 0.5).tolist(), "bucket_counts": counts.tolist()}


class TensorBoardSink:
  """Event files in `workdir/tensorboard` (`tensorboard --logdir WORKDIR`)."""

  def __init__(self, workdir: str, resume_step: int | None):
    from tensorboardX import SummaryWriter
    # On resume, TensorBoard discards the old events from the first re-run step on (as
    # metrics.jsonl drops its lines after the checkpoint).
    purge = resume_step + 1 if resume_step is not None else None
    self.writer = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge)

  def write(self, record: dict[str, Any]) -> None:
    step = record["step"]
    scalars, distributions = flatten(record)
    for tag, value in scalars.items():
      self.writer.add_scalar(tag, value, step)
    for tag, shares in distributions.items():
      self.writer.add_histogram_raw(tag, global_step=step, **index_histogram(shares))
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


class WandbSink:
  """A Weights & Biases run (`logging.wandb`), files under `workdir/wandb`. Re-running the same
  workdir continues the same W&B run (its id is kept in `workdir/wandb_run_id`)."""

  def __init__(self, workdir: str, settings, config, resume_step: int | None):
    try:
      import wandb
    except ImportError:
      raise ConfigError("config logging.wandb.enabled=True needs the wandb package: "
                        "pip install 'jaxtrain[wandb]'") from None
    self.wandb = wandb
    id_file = os.path.join(workdir, WANDB_ID_FILE)
    run_id = None
    if os.path.exists(id_file):
      with open(id_file) as f:
        run_id = f.read().strip() or None
    if run_id is None:
      run_id = uuid.uuid4().hex[:8]
      with open(id_file, "w") as f:
        f.write(run_id)
    name = settings.name or os.path.basename(os.path.abspath(workdir))
    self.run = wandb.init(project=settings.project, entity=settings.entity or None, name=name, id=run_id,
                          resume="allow", dir=workdir, mode=settings.mode, tags=list(settings.tags) or None,
                          config=config.to_dict() if config is not None else None)
    if resume_step is not None:
      log.info("W&B run %s resumed at step %d (steps it logged after %d are not rewritten)", run_id,
               resume_step, resume_step)

  def write(self, record: dict[str, Any]) -> None:
    scalars, distributions = flatten(record)
    data: dict[str, Any] = dict(scalars)
    for tag, shares in distributions.items():
      counts = np.nan_to_num(np.asarray(shares, np.float64))
      edges = np.arange(len(counts) + 1, dtype=np.float64) - 0.5
      data[tag] = self.wandb.Histogram(np_histogram=(counts, edges))
    self.run.log(data, step=record["step"])

  def close(self) -> None:
    self.run.finish()
