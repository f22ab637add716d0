"""The run's train step compiled from abstract values (nothing allocated, nothing run), and what
XLA says about it: the per-device memory of `compiled.memory_analysis()` and the FLOPs of
`cost_analysis()`. The planner's predictions are checked against these
(`experiments/validate_plan.py`, `tests/plan/`), and the Trainer writes the same peak next to
the prediction in `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from jaxtrain.models import factory
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel import rules
from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.parallel.rules import logical_to_spec
from jaxtrain.train import state as state_lib
from jaxtrain.train.optimizer import make_optimizer, schedule
from jaxtrain.train.step import BATCH_KEYS, make_train_step


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Per-device bytes of one compiled step (`compiled.memory_analysis()`)."""
  arguments: int
  outputs: int
  aliased: int  # outputs written into donated arguments
  temporaries: int

  @property
  def peak(self) -> int:
    """What the step needs at once: its inputs, the outputs that do not reuse a donated input,
    and the temporaries (XLA's own buffer assignment of them)."""
    return self.arguments + self.outputs - self.aliased + self.temporaries

  def as_dict(self) -> dict[str, int]:
    return {**dataclasses.asdict(self), "peak": self.peak}


def step_memory(compiled) -> StepMemory | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  return StepMemory(int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.alias_size_in_bytes),
                    int(m.temp_size_in_bytes))


def device_peak_bytes() -> int | None:
  """The first local device's peak bytes in use so far, where the backend reports it (GPU/TPU)."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  value = stats.get("peak_bytes_in_use")
  return int(value) if value is not None else None


def abstract_batch(config, mesh) -> tuple[dict[str, Any], dict[str, NamedSharding]]:
  B, T = config.train.global_batch, config.data.seq_len
  sharding = NamedSharding(mesh, logical_to_spec(("act_batch", "act_seq"), (B, T), mesh))
  shardings = {k: sharding for k in BATCH_KEYS}
  return {k: jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sharding) for k in BATCH_KEYS}, shardings


def compile_train_step(config, mesh=None, devices=None):
  """The run's jitted train step (same shardings and donation as the Trainer), compiled for
  abstract inputs. Returns `(compiled, mesh)`."""
  mesh = make_mesh(config.mesh, devices, config=config) if mesh is None else mesh
  cfg = ModelConfig.from_config(config.model, config.kernels)
  with mesh_context(mesh, expert_exchange=config.mesh.expert_exchange):
    graphdef, abstract_params, abstract_model_state = factory.abstract_model(cfg, config.seed)
    params_sharding = rules.param_shardings(abstract_params, mesh)
    model_state_sharding = state_lib.model_state_shardings(abstract_model_state, mesh)
    tx = make_optimizer(config.train)
    state_sharding = state_lib.state_shardings(tx, abstract_params, params_sharding, mesh, model_state_sharding)
    abstract_state = jax.eval_shape(lambda: state_lib.init_state(
        abstract_params, tx, state_sharding, config.seed,
        abstract_model_state if model_state_sharding is not None else None))
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
                                  state_sharding)
    batch, batch_sharding = abstract_batch(config, mesh)
    step = jax.jit(make_train_step(graphdef, cfg, config.train, tx, schedule(config.train)),
                   in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None),
                   donate_argnums=(0,))
    return step.lower(abstract_state, batch).compile(), mesh


__all__ = ["StepMemory", "abstract_batch", "compile_train_step", "device_peak_bytes", "step_memory"]
