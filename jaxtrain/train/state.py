"""Training state, its shardings, and parameters born sharded."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from jaxtrain.models import factory
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel.rules import param_shardings


@struct.dataclass
class TrainState:
  step: Any  # int32 scalar
  params: Any  # nnx.State of nnx.Param (fp32 masters)
  opt_state: Any
  rng: Any  # uint32 key data, for anything stochastic (kept so resume is exact)
  # nnx.State of the model's non-trainable `ModelState` variables (the routers' score-correction
  # biases), updated by the train step outside the optimizer; None for models without any.
  model_state: Any = None
  # Parameters the optimizer never touches (a LoRA / QLoRA base, or a preference objective's
  # frozen reference); None without any. Never checkpointed: rebuilt from the run's starting
  # point (model.init_from or the seed) on resume.
  frozen: Any = None


def model_state_shardings(abstract_state, mesh):
  """Shardings of the model state, or None when the model has none (see `TrainState`)."""
  if not jax.tree.leaves(abstract_state):
    return None
  return param_shardings(abstract_state, mesh)


def state_shardings(tx: optax.GradientTransformation, abstract_params, params_sharding, mesh,
                    model_state_sharding=None) -> TrainState:
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 - frozen parameters (`model.freeze`) have no state
  opt_sharding = optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt, params_sharding,
                                       transform_non_params=lambda _: replicated, is_leaf=masked)
  return TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding, rng=replicated,
                    model_state=model_state_sharding)


def init_params(cfg: ModelConfig, seed: int, shardings):
  """Random parameters created directly in their target shardings (never whole on one device)."""
  def init():
    return nnx.state(factory.create(cfg, seed), nnx.Param)

  return jax.jit(init, out_shardings=shardings)()


def init_model_state(cfg: ModelConfig, seed: int, shardings):
  """The model state's initial values (zero biases) in their shardings; None without any."""
  if shardings is None:
    return None

  def init():
    return nnx.split(factory.create(cfg, seed), nnx.Param, ...)[2]

  return jax.jit(init, out_shardings=shardings)()


def init_state(params, tx: optax.GradientTransformation, shardings: TrainState, seed: int,
               model_state=None) -> TrainState:
  def make(params, model_state):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)), model_state=model_state)

  return jax.jit(make, out_shardings=shardings)(params, model_state)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
