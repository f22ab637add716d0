"""Per-device memory of a config under full fine-tuning, LoRA and QLoRA, from abstract shapes
only (nothing is allocated or loaded): the start-up memory report's figures.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python experiments/lora_memory.py configs/qwen3_30b_a3b_lora.py
"""

from __future__ import annotations

import sys

import jax


def report(path: str, overrides: list[str]) -> dict:
  import jaxtrain
  from jaxtrain.checkpoint import abstract_with_shardings
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.parallel import memory
  from jaxtrain.parallel.mesh import make_mesh
  from jaxtrain.posttrain import methods, setup
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.optimizer import make_optimizer

  cfg = jaxtrain.load_config(path, overrides=["--config.model.init_from="] + overrides)
  mc = ModelConfig.from_config(cfg.model, cfg.kernels)
  mesh = make_mesh(cfg.mesh)
  plan = setup.plan(cfg, mc, mesh, methods.make(cfg))
  tx = make_optimizer(cfg.train)
  sh = state_lib.state_shardings(tx, plan.abstract_params, plan.params_sharding, mesh)
  state = abstract_with_shardings(jax.eval_shape(lambda: state_lib.init_state(plan.abstract_params, tx, sh, 0)), sh)
  frozen = None
  if plan.frozen_sharding is not None:
    base = plan.abstract_base if plan.quantizer is None else plan.quantizer.abstract(plan.abstract_base)
    frozen = abstract_with_shardings(base, plan.frozen_sharding)
  rep = memory.report(state.replace(frozen=frozen), mc, cfg, mesh)
  print(f"{path} {' '.join(overrides)}\n  " + memory.format_report(rep, mesh, mc.remat))
  return rep


if __name__ == "__main__":
  path = sys.argv[1]
  for extra in ([], ["--config.lora.quantize=nf4"], ["--config.lora.rank=0"]):
    report(path, sys.argv[2:] + extra)
