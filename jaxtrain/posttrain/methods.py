"""The registry of training methods: `train.method` -> its `Objective` (see objective.py), run
by the Trainer's loop; or a method with a loop of its own (grpo: train/grpo_trainer.py, chosen
in train/launch.py)."""

from __future__ import annotations

from jaxtrain.posttrain.objective import Objective
from jaxtrain.posttrain.preference_objective import PreferenceObjective

OBJECTIVES: dict[str, type[Objective]] = {
    "sft": Objective,  # next-token cross-entropy (pre-training and supervised fine-tuning)
    "dpo": PreferenceObjective,  # pairwise preference losses: preference.loss = sigmoid | ipo | ... | orpo
}

OWN_LOOP = ("grpo",)  # RL from rewards on sampled completions (the `grpo` section)
METHODS = (*OBJECTIVES, *OWN_LOOP)


def make(config) -> Objective:
  """The objective of a run config (`train.method`)."""
  method = config.train.method
  if method not in OBJECTIVES:
    raise ValueError(f"unknown train.method {method!r}; choose one of {tuple(OBJECTIVES)}")
  return OBJECTIVES[method](config)
