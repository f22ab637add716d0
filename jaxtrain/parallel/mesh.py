"""The device mesh ('data', 'fsdp', 'expert', 'sequence', 'tensor') built from `config.mesh`."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

AXES = ("data", "fsdp", "expert", "sequence", "tensor")


def defaults() -> ConfigDict:
  # -1 = take the devices the other axes leave; the default puts them all on fsdp (ZeRO-3).
  return ConfigDict({"data": 1, "fsdp": -1, "expert": 1, "sequence": 1, "tensor": 1})


def axis_sizes(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves -1 and checks that the product equals the device count."""
  from jaxtrain.config import ConfigError

  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  free = [axis for axis, size in sizes.items() if size == -1]
  bad = [f"mesh.{axis}={size}" for axis, size in sizes.items() if size == 0 or size < -1]
  if bad:
    raise ConfigError(f"{', '.join(bad)}: mesh sizes must be positive or -1")
  if len(free) > 1:
    raise ConfigError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in free)}")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f"mesh: the fixed axes multiply to {fixed}, which does not divide the "
                        f"{num_devices} available devices (so mesh.{free[0]}=-1 cannot be resolved)")
    sizes[free[0]] = num_devices // fixed
  total = math.prod(sizes.values())
  if total != num_devices:
    shape = ", ".join(f"{a}={s}" for a, s in sizes.items())
    raise ConfigError(f"mesh ({shape}) has {total} devices but {num_devices} are available")
  return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  sizes = axis_sizes(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if devices is jax.devices() or len(devices) == len(jax.devices()):
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def validate(config: ConfigDict) -> None:
  """Static checks that need no devices: divisibility of heads, experts and sequence."""
  from jaxtrain.config import require

  mesh, model = config.mesh, config.model
  for axis in AXES:
    require(mesh[axis] == -1 or mesh[axis] >= 1, f"mesh.{axis}", f"must be >= 1 or -1, got {mesh[axis]}")
  if mesh.expert > 1:
    require(model.num_experts % mesh.expert == 0, "mesh.expert",
            f"mesh.expert={mesh.expert} does not divide model.num_experts={model.num_experts}")
  if mesh.tensor > 1:
    require(model.num_heads % mesh.tensor == 0, "mesh.tensor",
            f"mesh.tensor={mesh.tensor} does not divide model.num_heads={model.num_heads}")
  if mesh.sequence > 1:
    require(model.num_heads % mesh.sequence == 0, "mesh.sequence",
            f"mesh.sequence={mesh.sequence} does not divide model.num_heads={model.num_heads}")
    require(config.data.seq_len % mesh.sequence == 0, "mesh.sequence",
            f"mesh.sequence={mesh.sequence} does not divide data.seq_len={config.data.seq_len}")


def mesh_context(mesh: Mesh):
  """Makes `mesh` the ambient mesh (`jax.set_mesh` on new JAX, `use_mesh` before it)."""
  if hasattr(jax, "set_mesh"):
    return jax.set_mesh(mesh)
  return jax.sharding.use_mesh(mesh)
