"""The checkpoint format: Orbax checkpoints of a run's train state, data-iterator state and
resolved config, and params-only checkpoints in the same layout (import-hf, model.init_from).

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. A training run's `state` is the
whole TrainState; a params-only checkpoint's `state` is `{"params": ..., "model_state": ...}`,
which is also the part of a TrainState that `restore_params` reads (optimizer state is never
read). Orbax writes each save into a temporary directory and renames it on commit, so an
interrupted save is never listed as a checkpoint; `latest_step` only sees committed ones.

This module sits below train/ and converters/ (which both read and write the format) and
imports nothing of the package.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("jaxtrain.checkpoint")


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def resolve_checkpoint_dir(path: str) -> str:
  """Accepts a workdir, its checkpoints/ directory, or one step directory; returns the
  directory holding step subdirectories."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints")
  if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
    return os.path.dirname(path)
  return path


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with the run's retention policy."""

  def __init__(self, directory: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True,
               read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_every or None,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    self.directory = directory
    self.manager = ocp.CheckpointManager(directory, options=options,
                                         item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, data_state: Any = None, config_json: str = "{}",
           force: bool = False) -> bool:
    if step in self.manager.all_steps():
      return False  # e.g. a stop signal right after a periodic save of the same step
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": data_state}),
        config=ocp.args.JsonSave(json.loads(config_json)),
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, Any, dict]:
    """Restores into `abstract_state`'s structure and shardings (any mesh)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(),
    ))
    return restored["state"], restored["data"]["iterator"], restored["config"]

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint under {self.directory}")
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(directory: str, item: dict, config: dict, step: int = 0) -> None:
  """A params-only checkpoint: `item` = {"params": nnx.State[, "model_state": nnx.State]}.
  Written uncompressed: tensorstore's compressed writer buffers a second copy of the arrays in
  host memory, and trained weights barely compress."""
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True),
      item_names=("state", "data", "config"),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(use_compression=False),
                     "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()})
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(item),
                                               data=ocp.args.JsonSave({"iterator": None}),
                                               config=ocp.args.JsonSave(config)), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()


def restore_params(directory: str, step: int, target: dict) -> dict:
  """Restores the entries of `target` ({"params": abstract State[, "model_state": ...]}, leaves
  `jax.ShapeDtypeStruct`s with shardings) from `state` of a run's or a params-only checkpoint,
  straight into those shardings."""
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                  item_names=("state",))
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
  finally:
    manager.close()
  return restored["state"]


def gather_process_states(state: Any) -> list:
  """Every process's JSON-able state (e.g. its data-iterator position), in process order, on
  every process: each host reads its own slice of the data, so all of them are saved."""
  if jax.process_count() == 1:
    return [state]
  import numpy as np
  from jax.experimental import multihost_utils

  raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([raw.size], np.int64)).reshape(-1)
  padded = np.zeros((int(lengths.max()),), np.uint8)
  padded[:raw.size] = raw
  gathered = multihost_utils.process_allgather(padded).reshape(len(lengths), -1)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, lengths)]


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
