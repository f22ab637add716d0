"""The training objective: the trainer's extension point for anything other than next-token SFT.

`train.method` names one `Objective` in `methods.OBJECTIVES`. An objective decides three things and
the trainer (train/trainer.py, train/step.py) does the rest the same way for every method
(mesh, shardings, micro-batches, optimizer, checkpoints with exact resume, metrics):

- the batch: `batch_fields(config)` gives every key's global shape, dtype and logical axes
  (the trainer builds the shardings and device arrays from it), and `pipeline(...)` builds the
  data iterator that yields those keys (a `DataIterator`, so its position is checkpointed);
- the loss: `loss(fwd, batch)` returns `(loss_sum, moe_aux, metric_sums)` for one
  (micro-)batch, and `normalizer(batch)` the global count it is divided by (loss tokens for
  SFT, pairs for preference losses), taken over the whole batch before it is split into
  micro-batches, so accumulation gives the same value as one big batch. Every entry of
  `metric_sums` is divided by the same normalizer and logged. A loss with a term normalised by
  another global count (ORPO's NLL: chosen tokens, not pairs) gets it from `totals(batch)`,
  also taken over the whole batch and handed to `loss` as `Forward.totals`;
- what it needs from the model: `Forward` (built by the train step) gives per-token
  log-probabilities of the targets under the policy being trained and, when
  `needs_reference()` is true, under the frozen reference (the base model with LoRA adapters disabled, or
  a frozen copy of the starting weights).

Objectives hold no model code and never import train/; the train step hands them `Forward`.
An objective is built once per run from the config (`Objective(config)`). Registering a new
method: subclass `Objective` in its own module and add the class to `methods.OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.vision import inputs as vision_inputs


@dataclasses.dataclass(frozen=True)
class BatchField:
  """One batch key: global shape, dtype name and logical axes (see parallel/rules.py)."""
  shape: tuple[int, ...]
  dtype: str
  axes: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Forward:
  """Model evaluations an objective may ask for inside the jitted step.

  `policy(batch)` -> (per-token log p(target) fp32 with the shape of `batch["input_ids"]`,
  MoE aux statistics) under the parameters being trained; differentiable. `reference(batch)`
  -> the same log-probabilities under the frozen reference (no gradient), or None when the
  run has no reference. Batches may carry extra leading dimensions (e.g. `[pairs, 2, T]`):
  the last dimension is time. `totals`: the objective's `totals(batch)` of the whole (global)
  batch, computed before it is split into micro-batches."""
  policy: Callable[[dict], tuple[Any, dict]]
  reference: Callable[[dict], Any] | None = None
  totals: dict = dataclasses.field(default_factory=dict)


CONTRACT = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


class Objective:
  """Next-token cross-entropy on packed documents (the data contract batches). Subclasses
  override what differs."""
  name = "sft"

  def __init__(self, config=None):
    self.config = config

  def needs_reference(self) -> bool:
    """Whether the train step must be able to evaluate a frozen reference model."""
    return False

  def batch_fields(self, config) -> dict[str, BatchField]:
    """The data contract's text keys, plus a vision-language model's per-row vision inputs
    (models/vision/inputs.py) when `model.vision` has a tower."""
    B, T = config.train.global_batch, config.data.seq_len
    fields = {k: BatchField((B, T), "int32", ("act_batch", "act_seq")) for k in CONTRACT}
    for k, (shape, dtype) in vision_inputs.model_shapes(_model_config(config), B, T).items():
      fields[k] = BatchField(shape, np.dtype(dtype).name, vision_inputs.input_axes(k, len(shape)))
    return fields

  def pipeline(self, config, split: str, tokenizer, process_index: int, process_count: int):
    from jaxtrain import data as data_lib
    it = data_lib.build_pipeline(config, split=split, tokenizer=tokenizer, process_index=process_index,
                                 process_count=process_count)
    model_cfg = _model_config(config)
    if model_cfg.vision.enabled:  # the pipeline's pixel arrays -> the model's per-row inputs
      it.convert = functools.partial(vision_inputs.model_batch, model_cfg, seq_len=config.data.seq_len)
    return it

  def normalizer(self, batch):
    return jnp.maximum(jnp.sum(batch["loss_mask"]).astype(jnp.float32), 1.0)

  def totals(self, batch) -> dict:
    """Whole-batch counts `loss` needs besides the normalizer (handed over as `Forward.totals`)."""
    return {}

  def loss(self, fwd: Forward, batch) -> tuple[Any, dict, dict]:
    logps, aux = fwd.policy(batch)
    return -jnp.sum(logps * batch["loss_mask"].astype(jnp.float32)), aux, {}

  def extra_metrics(self) -> tuple[str, ...]:
    """Names of the per-normalizer metrics `loss` reports (documentation and tests)."""
    return ()


def _model_config(config) -> ModelConfig:
  return ModelConfig.from_config(config.model, config.kernels)
