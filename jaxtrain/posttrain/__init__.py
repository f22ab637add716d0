"""Post-training on top of train/ and generate/: GRPO-family RL (grpo.py: the loop; rollout.py:
prompts and training rows; rewards.py; rl_loss.py: advantages and the clipped objective;
rl_step.py: the jitted update; config.py: the `grpo` section).

`Trainer(config)` (also `jaxtrain.Trainer`) returns the trainer of `config.train.method`:
`sft` -> train.trainer.Trainer, `grpo` -> grpo.GRPOTrainer.
"""

from __future__ import annotations


def Trainer(config, overrides=()):  # noqa: N802 - the public jaxtrain.Trainer
  """The trainer for `config.train.method` (a config, or a config file path + overrides);
  `.fit()` runs it."""
  from jaxtrain.train.run_config import load_config
  if isinstance(config, str):
    config, overrides = load_config(config, overrides), ()
  elif overrides:
    config, overrides = load_config(base=config, overrides=overrides), ()
  method = config.train.method if "method" in config.train else "sft"
  if method == "grpo":
    from jaxtrain.posttrain.grpo import GRPOTrainer
    return GRPOTrainer(config)
  from jaxtrain.train.trainer import Trainer as SFTTrainer
  return SFTTrainer(config)


__all__ = ["Trainer"]
