"""The start-up memory report of a config for a device mesh it would run on, without the devices:
simulated CPU devices stand in for them, parameters and optimizer state are abstract (shapes
and shardings only), so nothing is allocated. Parameter and optimizer bytes per device are
exact; activations are parallel/memory.py's estimate (vision tower included).

    python experiments/memory_report.py --config configs/qwen3_vl_30b_a3b_sft.py --devices 16
    python experiments/memory_report.py --config configs/internvl3_5_8b_sft.py --devices 8 \\
        --config.mesh.fsdp=8
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--devices", type=int, required=True, help="devices of the mesh (simulated)")
  args, overrides = p.parse_known_args(argv)
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax

  from jaxtrain.checkpoint import abstract_with_shardings
  from jaxtrain.models import factory
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.parallel import memory, rules
  from jaxtrain.parallel.mesh import make_mesh
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.freeze import with_freeze
  from jaxtrain.train.optimizer import make_optimizer
  from jaxtrain.train.run_config import load_config

  config = load_config(args.config, overrides, init_from_must_exist=False)
  cfg = ModelConfig.from_config(config.model, config.kernels)
  mesh = make_mesh(config.mesh, config=config)
  tx = with_freeze(make_optimizer(config.train), cfg.freeze)
  _, abstract, _ = factory.abstract_model(cfg)
  shardings = rules.param_shardings(abstract, mesh)
  state_sh = state_lib.state_shardings(tx, abstract, shardings, mesh)
  state = abstract_with_shardings(jax.eval_shape(lambda: state_lib.init_state(abstract, tx, state_sh, 0)), state_sh)
  rep = memory.report(state, cfg, config, mesh)
  act = memory.activation_bytes(cfg, global_batch=config.train.global_batch, seq_len=config.data.seq_len,
                                micro_batches=config.train.micro_batches, mesh_shape=dict(mesh.shape),
                                vocab_chunk=min(config.train.loss_vocab_chunk, cfg.vocab_size))
  print(memory.format_report(rep, mesh, cfg.remat))
  print(json.dumps({"params_total": state_lib.count_params(state.params), **rep,
                    "activations_vision": act["vision"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
