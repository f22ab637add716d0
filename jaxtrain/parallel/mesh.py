"""The device mesh ('data', 'fsdp', 'expert', 'sequence', 'tensor') built from `config.mesh`.

Every size is checked before anything is compiled: statically in `validate` (config load) and,
once -1 is resolved against the device count, in `check_sizes` (`make_mesh(..., config=...)`).
The batch is split over data, fsdp and expert; the sequence over `sequence` (Ulysses, see
parallel/sequence.py); heads and expert/MLP hidden dims over `tensor`; experts over `expert`.
"""

from __future__ import annotations

import contextlib
import logging
import math

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxtrain.kernels import dispatch
from jaxtrain.config import ConfigError, require

AXES = ("data", "fsdp", "expert", "sequence", "tensor")

log = logging.getLogger("jaxtrain.parallel")


def defaults() -> ConfigDict:
  # Devices per mesh axis; -1 = the devices the other axes leave (at most one axis). The default
  # puts them all on fsdp (ZeRO-3).
  return ConfigDict({
      "data": 1,  # pure data parallel: each group of devices holds a full replica of the parameters
      "fsdp": -1,  # data parallel with parameters and optimizer state sharded over it (ZeRO-3)
      "expert": 1,  # expert parallel: MoE experts split over it (also splits the batch)
      "sequence": 1,  # Ulysses sequence parallel: the sequence split over it (attention all-to-all)
      "tensor": 1,  # tensor parallel: attention heads and MLP / expert hidden dims split over it
      # How MoE token copies reach the devices owning their experts: "padded" (all_to_all of
      # fixed worst-case buffers, any backend), "ragged" (ragged_all_to_all, GPU/TPU only),
      # "ragged_emulated" (the ragged exchange over all-gathers: a reference for backends without
      # ragged_all_to_all, P times the memory) or "auto" (ragged where supported, else padded).
      "expert_exchange": "auto",
  })


def axis_sizes(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves -1 and checks that the product equals the device count."""
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


def check_sizes(config: ConfigDict, sizes: dict[str, int]) -> None:
  """Divisibility checks on the resolved mesh sizes (what `validate` cannot see while an
  axis is -1): each message names the mesh size and the number it must divide."""
  # (Key/value heads need no check: fewer than the sequence/tensor split are repeated.)
  model, errors = config.model, []
  heads = model.num_heads
  if sizes["expert"] > 1 and model.num_experts > 0 and model.num_experts % sizes["expert"]:
    errors.append(f"mesh.expert={sizes['expert']} does not divide model.num_experts={model.num_experts}")
  if heads % sizes["tensor"]:
    errors.append(f"mesh.tensor={sizes['tensor']} does not divide model.num_heads={heads}")
  if sizes["sequence"] > 1:
    if config.data.seq_len % sizes["sequence"]:
      errors.append(f"mesh.sequence={sizes['sequence']} does not divide data.seq_len={config.data.seq_len}")
    if heads % (sizes["sequence"] * sizes["tensor"]):
      errors.append(f"mesh.sequence * mesh.tensor = {sizes['sequence'] * sizes['tensor']} does not divide "
                    f"model.num_heads={heads} (Ulysses gives each device whole heads)")
  from jaxtrain.parallel.moe.select import ragged_supported
  if config.mesh.get("expert_exchange", "auto") == "ragged" and not ragged_supported():
    errors.append(f"mesh.expert_exchange='ragged' needs ragged_all_to_all, which the {dispatch.platform()!r} "
                  "backend does not implement; use 'padded' or 'auto'")
  if errors:
    shape = ", ".join(f"{a}={s}" for a, s in sizes.items())
    raise ConfigError(f"mesh ({shape}): " + "; ".join(errors))
  batch_split = sizes["data"] * sizes["fsdp"] * sizes["expert"]
  micro = config.train.global_batch // max(config.train.micro_batches, 1)
  if micro % batch_split:
    # Runs, but the batch cannot split over every batch axis: the axes that do not divide it
    # hold copies (redundant compute, and MoE layers fall back from expert parallel).
    log.warning("mesh.data * mesh.fsdp * mesh.expert = %d does not divide the %d sequences of a micro-batch "
                "(train.global_batch=%d, train.micro_batches=%d): the batch is replicated over the axes that do "
                "not divide it", batch_split, micro, config.train.global_batch, config.train.micro_batches)


def make_mesh(mesh_config, devices=None, *, config: ConfigDict | None = None) -> Mesh:
  """The mesh over `devices` (default: all, over every process). With the full `config`, the
  resolved sizes are also checked against the model, data and batch (`check_sizes`)."""
  devices = jax.devices() if devices is None else devices
  sizes = axis_sizes(mesh_config, len(devices))
  if config is not None:
    check_sizes(config, sizes)
  shape = tuple(sizes[a] for a in AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(AXES)
  if devices is jax.devices() or len(devices) == len(jax.devices()):
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def validate(config: ConfigDict) -> None:
  """Static checks that need no devices: divisibility of heads, experts and sequence."""
  mesh, model = config.mesh, config.model
  from jaxtrain.parallel.moe.select import EXCHANGES
  require(mesh.expert_exchange in EXCHANGES, "mesh.expert_exchange",
          f"{mesh.expert_exchange!r} is not one of {EXCHANGES}")
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
    if mesh.tensor > 1:
      require(model.num_heads % (mesh.sequence * mesh.tensor) == 0, "mesh.sequence",
              f"mesh.sequence * mesh.tensor = {mesh.sequence * mesh.tensor} does not divide "
              f"model.num_heads={model.num_heads}")
    require(config.data.seq_len % mesh.sequence == 0, "mesh.sequence",
            f"mesh.sequence={mesh.sequence} does not divide data.seq_len={config.data.seq_len}")


@contextlib.contextmanager
def mesh_context(mesh: Mesh, *, expert_exchange: str | None = None):
  """Makes `mesh` the ambient mesh (`jax.set_mesh` on new JAX, `use_mesh` before it) that
  model code reaches the parallel pieces through; `expert_exchange` (config
  mesh.expert_exchange) selects the MoE exchange for everything traced inside."""
  from jaxtrain.parallel.moe.select import exchange_context

  with contextlib.ExitStack() as stack:
    stack.enter_context(jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else jax.sharding.use_mesh(mesh))
    if expert_exchange is not None:
      stack.enter_context(exchange_context(expert_exchange))
    yield mesh
