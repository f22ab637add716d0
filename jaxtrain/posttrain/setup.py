"""What a run trains and what stays frozen, decided once from the config (`plan`).

- full fine-tuning (lora.rank = 0): every parameter trains; a preference objective that needs a
  reference keeps a frozen copy of the starting weights (`TrainState.frozen`);
- LoRA / QLoRA (lora.rank > 0): only the adapters train (`TrainState.params`, so the optimizer
  state holds only theirs); the base is `TrainState.frozen` (NF4 / int8 blocks under QLoRA) and
  the reference, when needed, is the base graph over the same frozen arrays.

The trainer loads or initialises the base parameters as for any run (`base_sharding`) and
hands them to `Plan.split`, which returns (trainable, frozen).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from jaxtrain.models import factory
from jaxtrain.parallel import rules
from jaxtrain.posttrain import lora as lora_lib
from jaxtrain.posttrain import qlora
from jaxtrain.posttrain.objective import Objective
from jaxtrain.posttrain.parts import ModelParts


@dataclasses.dataclass
class Plan:
  parts: ModelParts
  abstract_params: Any  # the trainable parameters (abstract)
  params_sharding: Any
  abstract_base: Any  # the model's own parameters, as loaded or initialised
  base_sharding: Any
  abstract_model_state: Any
  frozen_sharding: Any  # None: nothing frozen
  adapters: lora_lib.Adapters | None
  quantizer: qlora.Quantizer | None
  seed: int

  def split(self, base) -> tuple[Any, Any]:
    """Base parameters (nnx.State in `base_sharding`) -> (trainable, frozen or None)."""
    if self.adapters is None:
      if self.frozen_sharding is None:
        return base, None
      copy = jax.jit(lambda p: jax.tree.map(lambda x: x.copy(), p), out_shardings=self.frozen_sharding)
      return base, copy(base)
    frozen = base if self.quantizer is None else self.quantizer.quantize(base, self.frozen_sharding)
    return self.adapters.init(self.seed, self.params_sharding), frozen

  def import_adapters(self, path: str, model_cfg):
    """`lora.init_from`: the adapters of a PEFT adapter directory, in their shardings."""
    from jaxtrain.posttrain import peft_io
    values = peft_io.read_adapter(path, self.abstract_params, model_cfg, self.adapters)
    state = nnx.from_flat_state([(p, v.replace(values[p].astype(v.get_value().dtype)))
                                 for p, v in nnx.to_flat_state(self.abstract_params)])
    return jax.device_put(state, self.params_sharding)

  def frozen_only(self, base):
    return self.split(base)[1] if self.adapters is None else (
        base if self.quantizer is None else self.quantizer.quantize(base, self.frozen_sharding))


def plan(config, model_cfg, mesh, objective: Objective) -> Plan:
  base_graphdef, abstract_base, abstract_model_state = factory.abstract_model(model_cfg, config.seed)
  base_sharding = rules.param_shardings(abstract_base, mesh)
  adapters = lora_lib.Adapters.from_config(config.lora, model_cfg) if config.lora.rank > 0 else None
  if adapters is None:
    frozen_sharding = base_sharding if objective.needs_reference() else None
    parts = ModelParts(base_graphdef, base_graphdef if objective.needs_reference() else None)
    return Plan(parts, abstract_base, base_sharding, abstract_base, base_sharding, abstract_model_state,
                frozen_sharding, None, None, config.seed)
  graphdef, abstract_params = adapters.abstract(config.seed)
  params_sharding = rules.param_shardings(abstract_params, mesh)
  quantizer = qlora.Quantizer.from_config(config.lora) if config.lora.quantize != "none" else None
  frozen_sharding = base_sharding if quantizer is None else quantizer.shardings(abstract_base, mesh)
  parts = ModelParts(graphdef, base_graphdef if objective.needs_reference() else None, frozen_in_policy=True)
  return Plan(parts, abstract_params, params_sharding, abstract_base, base_sharding, abstract_model_state,
              frozen_sharding, adapters, quantizer, config.seed)


def count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree) if hasattr(x, "size"))


__all__ = ["Plan", "plan", "count"]
