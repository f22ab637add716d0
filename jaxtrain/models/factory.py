"""A model from its config: the one place that knows which module class a `ModelConfig` builds."""

from __future__ import annotations

from flax import nnx

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.decoder import Decoder


def create(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  return Decoder(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig, seed: int = 0):
  """(graphdef, abstract params, abstract model state (`ModelState` variables; empty for most
  models)) without allocating anything."""
  return nnx.split(nnx.eval_shape(lambda: create(cfg, seed)), nnx.Param, ...)
