"""Compile time vs depth, and step time / memory vs sequence length under each remat policy.

1. Compile time of the full train step for 4, 8, 16 and 32 layers: with scanned layers it
   should stay flat (the acceptance target: 32 layers within 1.5x of 4).
2. Step time and XLA's own peak-memory estimate (`compiled.memory_analysis()`: arguments +
   temporaries) vs sequence length, for remat none / full / save_dots.

    python experiments/scaling.py                       # CPU-sized, a few minutes
    python experiments/scaling.py --seqs 1024,4096,16384,32768 --hidden 1024 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def build_step(model: dict, batch: int, seq: int):
  from jaxtrain.train.run_config import load_config
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.parallel.mesh import make_mesh, mesh_context
  from jaxtrain.train import state as state_lib
  from jaxtrain.models import factory
  from jaxtrain.parallel import rules
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.step import BATCH_KEYS, make_train_step

  config = load_config(base={"model": model, "train": {"global_batch": batch}, "data": {"seq_len": seq}})
  cfg = ModelConfig.from_config(config.model, config.kernels)
  mesh = make_mesh(config.mesh)
  with mesh_context(mesh):
    graphdef, abstract, _ = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, mesh)
    tx = make_optimizer(config.train)
    state_sh = state_lib.state_shardings(tx, abstract, shardings, mesh)
    abstract_state = jax.eval_shape(lambda: state_lib.init_state(abstract, tx, state_sh, 0))
    abstract_batch = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32) for k in BATCH_KEYS}
    step = jax.jit(make_train_step(graphdef, cfg, config.train, tx, schedule(config.train)), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(abstract_state, abstract_batch).compile()
    compile_s = time.perf_counter() - t0

    def run(iters: int) -> float:
      state = state_lib.init_state(state_lib.init_params(cfg, 0, shardings), tx, state_sh, 0)
      rng = np.random.default_rng(0)
      ids = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
      b = {"input_ids": ids[:, :seq], "target_ids": ids[:, 1:], "loss_mask": np.ones((batch, seq), np.int32),
           "segment_ids": np.ones((batch, seq), np.int32),
           "positions": np.tile(np.arange(seq, dtype=np.int32), (batch, 1))}
      b = {k: jnp.asarray(v) for k, v in b.items()}
      times = []
      for i in range(iters + 1):
        t0 = time.perf_counter()
        state, metrics = compiled(state, b)
        jax.block_until_ready(metrics)
        if i:
          times.append(time.perf_counter() - t0)
      return float(np.median(times))

  return compiled, compile_s, run


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def main(argv=None) -> int:
  cpu = jax.default_backend() == "cpu"
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", default="4,8,16,32")
  p.add_argument("--seqs", default="256,512,1024,2048" if cpu else "1024,4096,8192,16384,32768")
  p.add_argument("--remats", default="none,full,save_dots")
  p.add_argument("--hidden", type=int, default=128 if cpu else 1024)
  p.add_argument("--experts", type=int, default=8 if cpu else 32)
  p.add_argument("--batch", type=int, default=2 if cpu else 1)
  p.add_argument("--dtype", default="float32" if cpu else "bfloat16")
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--out", default=os.environ.get("OUT"))
  args = p.parse_args(argv)
  H = max(args.hidden // 64, 2)
  model = dict(vocab_size=512 if cpu else 32768, hidden_size=args.hidden, num_heads=H, num_kv_heads=max(H // 2, 1),
               head_dim=64 if not cpu else 32, intermediate_size=4 * args.hidden, num_experts=args.experts,
               num_experts_per_tok=2, moe_intermediate_size=args.hidden, dtype=args.dtype)
  out = []

  out.append("## Compile time vs depth (train step, scanned layers)\n")
  out.append("| layers | compile s | vs 4 layers |")
  out.append("|---|---|---|")
  print("\n".join(out), flush=True)
  base = None
  for layers in [int(v) for v in args.layers.split(",")]:
    _, compile_s, _ = build_step({**model, "num_layers": layers}, args.batch, int(args.seqs.split(",")[0]))
    base = base or compile_s
    line = f"| {layers} | {compile_s:.1f} | {compile_s / base:.2f}x |"
    out.append(line)
    print(line, flush=True)

  out.append("\n## Step time and peak memory vs sequence length (4 layers)\n")
  out.append("| seq | remat | step ms | tokens/s | peak MB (XLA estimate) | compile s |")
  out.append("|---|---|---|---|---|---|")
  print("\n".join(out[-3:]), flush=True)
  for seq in [int(v) for v in args.seqs.split(",")]:
    for remat in args.remats.split(","):
      compiled, compile_s, run = build_step({**model, "num_layers": 4, "remat": remat}, args.batch, seq)
      step = run(args.iters)
      line = (f"| {seq} | {remat} | {step * 1e3:.1f} | {args.batch * seq / step:,.0f} | "
              f"{peak_bytes(compiled) / 2**20:,.0f} | {compile_s:.1f} |")
      out.append(line)
      print(line, flush=True)
  text = "\n".join(out)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
