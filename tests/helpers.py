"""Shared helpers for tests: tiny model configs and batches."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# See tests/conftest.py: compile fast, identically in every process of a test.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test subprocess with `devices` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}"


def tiny_moe(**changes):
  """A tiny MoE `ModelConfig` (imported here: tests/conftest.py imports this module, and the kernel
  tests must run where ml_collections is missing, e.g. the GPU check)."""
  from jaxtrain.models.config import ModelConfig
  base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
              intermediate_size=48, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
              max_position_embeddings=256, rope_theta=10000.0, gmm_impl="xla", attention_impl="xla")
  base.update(changes)
  return ModelConfig(**base)


def random_batch(batch: int, seq: int, vocab: int, *, seed: int = 0, docs_per_row: int = 1):
  """A packed batch following the data contract: rows hold `docs_per_row` documents."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
  bounds = np.linspace(0, seq, docs_per_row + 1).astype(int)
  seg = np.zeros((batch, seq), np.int32)
  pos = np.zeros((batch, seq), np.int32)
  for d in range(docs_per_row):
    seg[:, bounds[d]:bounds[d + 1]] = d + 1
    pos[:, bounds[d]:bounds[d + 1]] = np.arange(bounds[d + 1] - bounds[d])
  mask = np.ones((batch, seq), np.int32)
  mask[:, bounds[1:] - 1] = 0  # last token of each document has no next token in it
  return {"input_ids": ids[:, :seq], "target_ids": ids[:, 1:], "loss_mask": mask, "segment_ids": seg,
          "positions": pos}


def run_python(code: str, *, devices: int = 1, timeout: int = 600, env=None) -> str:
  """Runs `code` in a fresh interpreter with `devices` simulated CPU devices; returns stdout."""
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = xla_flags(devices)
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                        env=full_env, cwd=REPO)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc.stdout


def train_curve(mesh: dict, *, steps: int = 5, model: dict | None = None, batch: int = 8, seq: int = 16,
                micro_batches: int = 1, devices: int | None = None,
                expert_exchange: str = "auto") -> dict:
  """Losses and gradient norms of `steps` train steps of a tiny MoE model on fixed random
  batches, under the given mesh sizes (runs in the current process; use `run_python` to
  simulate devices). Also reports per-device parameter bytes. `devices`: use only the first
  that many devices (e.g. a 1-device reference inside an 8-device process);
  `expert_exchange`: mesh.expert_exchange for the MoE layers."""
  import jax
  import jax.numpy as jnp
  from ml_collections import ConfigDict

  from jaxtrain.parallel.mesh import make_mesh, mesh_context
  from jaxtrain.train import state as state_lib
  from jaxtrain.models import factory
  from jaxtrain.parallel import rules
  from jaxtrain.train.config import defaults as train_defaults
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.step import BATCH_KEYS, make_train_step
  from jaxtrain.parallel.rules import logical_to_spec
  from jax.sharding import NamedSharding

  cfg = tiny_moe(**(model or {}))
  tc = train_defaults()
  tc.global_batch, tc.micro_batches, tc.warmup_steps, tc.steps = batch, micro_batches, 1, steps
  mesh_cfg = ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **mesh})
  m = make_mesh(mesh_cfg, None if devices is None else jax.devices()[:devices])
  with mesh_context(m, expert_exchange=expert_exchange):
    graphdef, abstract, _ = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, m)
    tx = make_optimizer(tc)
    state_sh = state_lib.state_shardings(tx, abstract, shardings, m)
    state = state_lib.init_state(state_lib.init_params(cfg, 0, shardings), tx, state_sh, 0)
    batch_sh = NamedSharding(m, logical_to_spec(("act_batch", "act_seq"), (batch, seq), m))
    step = jax.jit(make_train_step(graphdef, cfg, tc, tx, schedule(tc)), in_shardings=(state_sh, {k: batch_sh for k in BATCH_KEYS}),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
    param_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state.params))
    losses, norms = [], []
    for i in range(steps):
      b = random_batch(batch, seq, cfg.vocab_size, seed=i, docs_per_row=2)
      b = {k: jax.device_put(jnp.asarray(b[k]), batch_sh) for k in BATCH_KEYS}
      state, metrics = step(state, b)
      metrics = jax.device_get(metrics)
      losses.append(float(metrics["loss"]))
      norms.append(float(metrics["grad_norm"]))
  return {"loss": losses, "grad_norm": norms, "param_bytes_per_device": param_bytes}
