"""The planner's predicted step time vs the measured one on CPU, for validation cases of
experiments/validate_plan.py (same models, meshes, remat policies; the fast ones: one device and
small 8-device meshes).

Predicted: `plan.timing.step_time` for the case's candidate on `plan.hardware.cpu_device` (the
host's sustained float32 matmul FLOP/s, measured once at 512x512, times the fraction of it a CPU
step reaches, split over the simulated devices).
Measured: the median step time of the Trainer's compiled step (steps after the first), in a
subprocess with the case's number of simulated CPU devices. Also printed: the FLOP/s the step
reached (the FLOPs model's count over the measured time, all devices) next to the host's matmul
FLOP/s as the planner measures it (back-to-back matmuls for ~1 s) and sustained over the same
seconds as the step (~2 s, on a shared host the fair comparison), to tell a
wrong FLOP count or FLOP/s model from a busy host. (XLA's `cost_analysis()` counts a scanned
layer's body once, not once per layer, so it is no check of the FLOP count here.)

    python experiments/validate_step_time.py
    python experiments/validate_step_time.py --only dense-1dev-256,moe-fsdp8-1k --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from validate_plan import CASES, FAMILIES  # noqa: E402

DEFAULT_CASES = ("dense-1dev-256", "moe-1dev-1k", "dense-fsdp8-1k-full", "moe-fsdp8-1k", "moe-ep8-1k-dots",
                 "mla-fsdp8-1k", "gptoss-fsdp8-1k")


def case_base(name: str, workdir: str, steps: int) -> dict:
  family, devices, mesh, remat, seq, batch, extra = CASES[name]
  sizes = {"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **mesh}
  return {"workdir": workdir, "model": {**FAMILIES[family], **extra, "remat": remat}, "mesh": sizes,
          "data": {"seq_len": seq, "tokenizer": "byte"},
          "train": {"global_batch": batch, "loss_vocab_chunk": 2048, "steps": steps, "log_every": 1,
                    "warmup_steps": 1, "progress": False},
          "eval": {"batches": 0}, "checkpoint": {"enabled": False}, "sample": {"enabled": False},
          "logging": {"tensorboard": False}}


def sustained_matmul_flops(seconds: float = 2.0, n: int = 512) -> float:
  """float32 n x n matmul FLOP/s averaged over `seconds` of back-to-back calls (on the first
  device, whose matmuls use every core as the planner's measurement does)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    f(a).block_until_ready()
    calls += 1
  return 2 * n ** 3 * calls / (time.perf_counter() - t0)


def worker(name: str, steps: int) -> dict:
  from jaxtrain import Trainer
  from jaxtrain.plan.hardware import cpu_device, cpu_matmul_flops
  from jaxtrain.plan.memory import predict
  from jaxtrain.plan.timing import step_time
  from jaxtrain.plan.workload import Workload, candidate_from_config
  from jaxtrain.train.run_config import load_config

  n = CASES[name][1]
  with tempfile.TemporaryDirectory() as workdir:
    config = load_config(base=case_base(name, workdir, steps))
    workload, candidate = Workload.from_config(config), candidate_from_config(config)
    mem = predict(workload, candidate, "cpu")
    device = cpu_device(devices=n)
    t = step_time(workload, candidate, device, local_tokens=mem.local_tokens, grads=mem.grads,
                  gathered_per_pass=mem.gathered_per_pass, host=mem.host)
    summary = Trainer(config).fit()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
  times = [r["step_time"] for r in records if "step_time" in r][1:]  # the first step warms up
  return {"case": name, "devices": n, "predicted": t.step, "compute": t.compute, "overlapped": t.overlapped,
          "exposed": t.exposed, "model_flops_per_device": t.flops_per_device, "host_matmul_flops": cpu_matmul_flops(),
          "sustained_matmul_flops": sustained_matmul_flops(), "measured": statistics.median(times), "times": times,
          "compile_s": summary.get("compile_seconds"), "load": os.getloadavg()[0]}


def run_case(name: str, steps: int, timeout: float) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={CASES[name][1]}".strip()
  proc = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(steps)], env=env,
                        capture_output=True, text=True, timeout=timeout)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"case {name} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


HEADER = ("| case | devices | predicted s | measured s | measured / predicted | model GFLOP per step (all devices) | "
          "reached GFLOP/s | host matmul GFLOP/s: planner's / sustained | reached / sustained | comm. predicted s | "
          "load avg |\n|---|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
  comm = sum(r["overlapped"].values()) + sum(r["exposed"].values())
  flops = r["model_flops_per_device"] * r["devices"]
  return (f"| {r['case']} | {r['devices']} | {r['predicted']:.3f} | {r['measured']:.3f} | "
          f"{r['measured'] / r['predicted']:.2f} | {flops / 1e9:.1f} | {flops / r['measured'] / 1e9:.1f} | "
          f"{r['host_matmul_flops'] / 1e9:.1f} / {r['sustained_matmul_flops'] / 1e9:.1f} | "
          f"{flops / r['measured'] / r['sustained_matmul_flops']:.2f} | {comm:.3f} | "
          f"{r['load']:.1f} |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", default="", help="comma-separated case names (default: %s)" % ",".join(DEFAULT_CASES))
  p.add_argument("--steps", type=int, default=5, help="steps per case (the first is not timed)")
  p.add_argument("--timeout", type=float, default=900, help="seconds per case")
  p.add_argument("--json", action="store_true", help="also print each case's JSON")
  p.add_argument("--from-json", default="", help="print the table of a --json run's output file instead")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(args.worker, args.steps)), flush=True)
    return 0
  print(HEADER, flush=True)
  if args.from_json:
    with open(args.from_json) as f:
      for line in f:
        if line.startswith("{"):
          print(row(json.loads(line)))
    return 0
  for name in [n for n in args.only.split(",") if n] or DEFAULT_CASES:
    t0 = time.perf_counter()
    r = run_case(name, args.steps, args.timeout)
    print(row(r), flush=True)
    if args.json:
      print(json.dumps(r), flush=True)
    print(f"  ({time.perf_counter() - t0:.0f} s, load {r['load']:.1f})", file=sys.stderr, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
