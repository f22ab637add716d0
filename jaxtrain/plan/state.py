"""Exact per-device bytes of the training state for a mesh given only by its axis sizes: every
parameter's shard shape comes from the same logical-axis rules the trainer shards with
(`parallel/rules.py`), so no device is needed. Also the weights one layer gathers under fsdp
(what a layer's forward and backward hold unsharded while they run)."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import numpy as np
from flax import nnx

from jaxtrain.models.layers import dtype_of
from jaxtrain.parallel.mesh import AXES
from jaxtrain.parallel.rules import logical_to_spec, param_logical_axes

# Parameter axes that fsdp shards (ZeRO-3): a layer gathers them while it runs.
GATHERED_AXES = ("fsdp", "data")


@dataclasses.dataclass(frozen=True)
class MeshShape:
  """A mesh known only by its axis sizes (enough for `logical_to_spec`)."""
  sizes: Mapping[str, int]

  @property
  def shape(self) -> dict[str, int]:
    return {a: int(self.sizes.get(a, 1)) for a in AXES}

  @property
  def size(self) -> int:
    return math.prod(self.shape.values())

  def __getitem__(self, axis: str) -> int:
    return self.shape[axis]

  def describe(self) -> str:
    parts = [f"{a}={s}" for a, s in self.shape.items() if s > 1]
    return " ".join(parts) or "1 device"


def _spec_axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def shard_shape(shape, logical, mesh: MeshShape, keep: tuple[str, ...] | None = None) -> tuple[int, ...]:
  """The shape of one device's shard; with `keep`, only those mesh axes shard (the others are
  gathered)."""
  spec = logical_to_spec(logical, shape, mesh)
  out = list(shape)
  for i, entry in enumerate(spec):
    split = math.prod(mesh[a] for a in _spec_axes(entry) if keep is None or a in keep)
    out[i] = -(-out[i] // split)
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class StateBytes:
  """Per-device bytes of the train state and of what one layer gathers."""
  params: int  # fp32 (param_dtype) masters, sharded
  grads: int  # the step's gradients, sharded like the params
  opt_state: int  # AdamW moments (2 x params) and counters
  layer_gathered: dict[int, int]  # stage -> one layer's weights gathered over fsdp, in param_dtype
  embed_gathered: int  # embedding table (+ LM head) gathered over fsdp, in param_dtype
  count: int  # parameters in the model (all devices)


def _stage_of(path) -> int | None:
  keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
  for a, b in zip(keys, keys[1:]):
    if a == "stages" and isinstance(b, int):
      return b
  return None


def state_bytes(abstract_params, mesh: MeshShape, stage_repeats: tuple[int, ...]) -> StateBytes:
  """From the abstract parameters (`factory.abstract_model`) and the mesh sizes."""
  params, gathered, embed, count = 0, {}, 0, 0
  keep = tuple(a for a in AXES if a not in GATHERED_AXES)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  for path, var in leaves:
    value = var.get_value()
    shape, itemsize = tuple(value.shape), np.dtype(value.dtype).itemsize
    logical = param_logical_axes(var)
    count += math.prod(shape)
    params += math.prod(shard_shape(shape, logical, mesh)) * itemsize
    full = math.prod(shard_shape(shape, logical, mesh, keep)) * itemsize
    stage = _stage_of(path)
    if stage is None:
      embed += full
    else:
      gathered[stage] = gathered.get(stage, 0) + full // stage_repeats[stage]
  # optax adamw: mu and nu like the params; the counters are scalars.
  return StateBytes(params=params, grads=params, opt_state=2 * params, layer_gathered=gathered,
                    embed_gathered=embed, count=count)


def compute_itemsize(cfg) -> int:
  return np.dtype(dtype_of(cfg.dtype)).itemsize
