"""How the train step assembles the models it evaluates from a TrainState.

- policy: `graphdef` merged with the trainable parameters, plus the frozen ones when
  `frozen_in_policy` (the LoRA / QLoRA base, possibly quantized), plus the model state;
- reference (preference objectives): `ref_graphdef` merged with the frozen parameters. Under
  LoRA that is the base model's graph over the very same frozen arrays, so "adapters disabled"
  costs no second copy; under full fine-tuning the frozen parameters are a copy of the
  starting weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx


@dataclasses.dataclass(frozen=True)
class ModelParts:
  graphdef: Any
  ref_graphdef: Any = None  # None: no reference model
  frozen_in_policy: bool = False

  def policy_states(self, params, frozen=None, model_state=None) -> tuple:
    """The states `nnx.merge(graphdef, *states)` takes for the policy (what a sampler built from
    `graphdef` is handed)."""
    states = [params]
    if self.frozen_in_policy:
      states.append(frozen)
    if model_state is not None:
      states.append(model_state)
    return tuple(states)

  def policy(self, params, frozen=None, model_state=None) -> nnx.Module:
    return nnx.merge(self.graphdef, *self.policy_states(params, frozen, model_state))

  def reference(self, frozen, model_state=None) -> nnx.Module | None:
    if self.ref_graphdef is None or frozen is None:
      return None
    states = [frozen] + ([] if model_state is None else [model_state])
    return nnx.merge(self.ref_graphdef, *states)
