"""Bytes per device of arrays (or ShapeDtypeStructs) from their shardings. The planner
(jaxtrain/plan) predicts a step's whole memory; this reads what is actually allocated."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def shard_bytes(x) -> int:
  """Bytes of the largest shard of one array (or ShapeDtypeStruct with a sharding)."""
  shape, dtype = tuple(x.shape), np.dtype(x.dtype)
  sharding = getattr(x, "sharding", None)
  if sharding is not None and shape:
    shape = sharding.shard_shape(shape)
  return int(math.prod(shape)) * dtype.itemsize


def bytes_per_device(tree: Any) -> int:
  return sum(shard_bytes(x) for x in jax.tree.leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype"))
