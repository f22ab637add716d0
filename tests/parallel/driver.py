"""Training-curve driver for the parallel tests: runs a few train steps of the tiny MoE model
under one mesh, in this process, single- or multi-process (each process feeds its own rows).

Unlike `tests.helpers.train_curve` it starts every mesh from the same host copy of the initial
state (so several meshes in one process compile the train step only), can save / restore an
Orbax checkpoint collectively, and reports which exchange collectives the step lowered to.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from jaxtrain.kernels import pallas_backend
from jaxtrain.parallel import distributed
from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.parallel.memory import bytes_per_device
from jaxtrain.parallel.rules import logical_to_spec
from jaxtrain.train import state as state_lib
from jaxtrain.models import factory
from jaxtrain.parallel import rules
from jaxtrain.checkpoint import Checkpointer, abstract_with_shardings
from jaxtrain.train.config import defaults as train_defaults
from jaxtrain.train.optimizer import make_optimizer, schedule
from jaxtrain.train.step import BATCH_KEYS, make_train_step
from tests.helpers import random_batch, tiny_moe

BATCH, SEQ = 8, 16
_compiled: dict = {}  # compiled train steps of this process, by mesh and settings


def _train_config(steps: int, micro_batches: int = 1):
  tc = train_defaults()
  tc.global_batch, tc.micro_batches, tc.warmup_steps, tc.steps = BATCH, micro_batches, 1, steps
  return tc


def mesh_of(sizes: dict, devices: int | None = None):
  cfg = ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **sizes})
  return make_mesh(cfg, None if devices is None else jax.devices()[:devices])


class Setup:
  """Model, optimizer and shardings for one mesh."""

  def __init__(self, mesh, model: dict | None = None, steps: int = 5, micro_batches: int = 1):
    self.mesh = mesh
    self.cfg = tiny_moe(**(model or {}))
    self.tc = _train_config(steps, micro_batches)
    self.graphdef, self.abstract, _ = factory.abstract_model(self.cfg)
    self.tx = make_optimizer(self.tc)
    self.param_sh = rules.param_shardings(self.abstract, mesh)
    self.state_sh = state_lib.state_shardings(self.tx, self.abstract, self.param_sh, mesh)
    self.batch_sh = NamedSharding(mesh, logical_to_spec(("act_batch", "act_seq"), (BATCH, SEQ), mesh))

  def abstract_state(self):
    state = jax.eval_shape(lambda: state_lib.init_state(self.abstract, self.tx, self.state_sh, 0))
    return abstract_with_shardings(state, self.state_sh)

  def init_state(self):
    with mesh_context(self.mesh):
      return state_lib.init_state(state_lib.init_params(self.cfg, 0, self.param_sh), self.tx, self.state_sh, 0)

  def place(self, host_state):
    """A host (numpy) copy of a state -> global arrays in this mesh's shardings."""
    def put(x, sharding):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(put, host_state, self.state_sh)

  def batch(self, i: int):
    """Batch i: this process's rows of the fixed global random batch, as one global array."""
    full = random_batch(BATCH, SEQ, self.cfg.vocab_size, seed=i, docs_per_row=2)
    lo, hi = distributed.check_batch_sharding(self.batch_sh, (BATCH, SEQ))
    return {k: jax.make_array_from_process_local_data(self.batch_sh, full[k][lo:hi]) for k in BATCH_KEYS}


def host_copy(state):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state)


def reference_state(model: dict | None = None):
  """The initial state, computed on one device, as a host copy."""
  return host_copy(Setup(mesh_of({}, devices=1), model).init_state())


def curve(sizes: dict, *, steps: int = 5, start: int = 0, total: int | None = None, expert_exchange: str = "padded",
          devices: int | None = None, model: dict | None = None, host_state=None, micro_batches: int = 1,
          save: tuple[str, int] | None = None, restore: tuple[str, int] | None = None) -> dict:
  """Losses and gradient norms of steps start..start+steps-1 under mesh `sizes` (lr schedule
  over `total` steps, default start + steps). The state is `host_state` placed in the mesh,
  restored from `restore` = (directory, step), or a fresh init; `save` = (directory, step)
  writes a checkpoint after that many steps."""
  total = start + steps if total is None else total
  mesh = mesh_of(sizes, devices)
  s = Setup(mesh, model, total, micro_batches)
  with mesh_context(mesh, expert_exchange=expert_exchange):
    if restore is not None:
      ckpt = Checkpointer(restore[0], async_save=False, read_only=True)
      state, _, _ = ckpt.restore(restore[1], s.abstract_state())
      ckpt.close()
    elif host_state is not None:
      state = s.place(host_state)
    else:
      state = s.init_state()
    param_bytes = bytes_per_device(state.params)
    key = (tuple(sorted(sizes.items())), devices, tuple(sorted((model or {}).items())), total, micro_batches,
           expert_exchange, pallas_backend.interpret())
    if key not in _compiled:  # e.g. a restored run continuing a curve computed in this process
      step = jax.jit(make_train_step(s.graphdef, s.cfg, s.tc, s.tx, schedule(s.tc)),
                     in_shardings=(s.state_sh, {k: s.batch_sh for k in BATCH_KEYS}),
                     out_shardings=(s.state_sh, None), donate_argnums=(0,))
      lowered = step.lower(state, s.batch(start))
      _compiled[key] = (lowered.as_text(), lowered.compile())
    text, compiled = _compiled[key]
    losses, norms = [], []
    for i in range(start, start + steps):
      state, metrics = compiled(state, s.batch(i))
      metrics = jax.device_get(metrics)
      losses.append(float(metrics["loss"]))
      norms.append(float(metrics["grad_norm"]))
      if save is not None and i + 1 == save[1]:
        ckpt = Checkpointer(save[0], async_save=False)
        ckpt.save(i + 1, state, data_state=None, config_json="{}", force=True)
        ckpt.close()
  return {"loss": losses, "grad_norm": norms, "param_bytes_per_device": param_bytes,
          "all_to_all": text.count("all_to_all") - text.count("ragged_all_to_all"),
          "ragged_all_to_all": text.count("ragged_all_to_all"), "all_gather": text.count("all_gather"),
          "processes": jax.process_count(), "devices": jax.device_count()}
