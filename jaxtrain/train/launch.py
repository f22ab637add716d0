"""`Trainer(config)` (also `jaxtrain.Trainer`): the trainer of `config.train.method`.

Objective-based methods (sft, dpo: `posttrain/methods.py`) run the `train.trainer.Trainer` loop;
grpo runs its own (`train/grpo_trainer.py`: rollouts, rewards, several updates per batch).
"""

from __future__ import annotations

from jaxtrain.train import trainer as trainer_lib
from jaxtrain.train.grpo_trainer import GRPOTrainer
from jaxtrain.train.run_config import load_config


def Trainer(config, overrides=()) -> trainer_lib.Trainer:  # noqa: N802 - the public jaxtrain.Trainer
  """The trainer for `config.train.method` (a loaded config, or a config file path / dict plus
  overrides); `.fit()` runs it and returns a summary dict."""
  if isinstance(config, str):
    config = load_config(config, overrides)
  elif overrides or not hasattr(config, "lock"):
    config = load_config(base=config, overrides=overrides)
  if config.train.method == "grpo":
    return GRPOTrainer(config)
  return trainer_lib.Trainer(config)


__all__ = ["Trainer"]
