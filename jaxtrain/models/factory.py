"""A model from its config: the one place that knows which module class a `ModelConfig` builds."""

from __future__ import annotations

from flax import nnx

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.decoder import Decoder
from jaxtrain.models.vision.cls_vit import ClsViT, ShuffleProjector
from jaxtrain.models.vision.rope_vit import MergerProjector, RopeViT
from jaxtrain.models.vlm import VisionLanguageModel

# model.vision.tower -> (vision tower, projector)
TOWERS = {"rope_vit": (RopeViT, MergerProjector), "cls_vit": (ClsViT, ShuffleProjector)}


def create(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  if cfg.vision.enabled:
    tower, projector = TOWERS[cfg.vision.tower]
    return VisionLanguageModel(cfg, tower, projector, rngs=nnx.Rngs(seed))
  return Decoder(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig, seed: int = 0):
  """(graphdef, abstract params, abstract model state (`ModelState` variables; empty for most
  models)) without allocating anything."""
  return nnx.split(nnx.eval_shape(lambda: create(cfg, seed)), nnx.Param, ...)
