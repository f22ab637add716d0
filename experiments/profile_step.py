"""Where the time of one jaxtrain train step goes, by kind of work.

Traces a few steps of the bench_train preset with the JAX profiler, sums the device time of
every compiled op, and groups ops by what the HLO metadata says they come from (MoE expert
matmuls, attention core, other matmuls, scan stacking, zero-fills, ...). Also counts the minor
page faults per step (fresh pages the host allocator hands out), which on XLA:CPU are a real
cost: every step allocates and zero-fills its temporaries anew.

    python experiments/profile_step.py                 # CPU: the quickstart-sized MoE
    python experiments/profile_step.py --preset cpu-dense --steps 5
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PRESETS, jaxtrain_step  # noqa: E402

# einsum subscripts used by kernels/moe_blocked.py and kernels/attention.py; the op_name metadata
# of every op XLA emits for them (forward and transposed) carries these strings.
CATEGORIES = (
    ("MoE expert matmuls", re.compile(r"bme,bef|bmi,bie|bme,bie|bmi,bme|bmf,bef|bme,bmf|bef,bmf|bie,bme")),
    ("attention core (QK^T, PV, softmax)", re.compile(r"bkgts|btkgd|bskd")),
)


def categorize(name: str, op_name: str) -> str:
  for label, pattern in CATEGORIES:
    if pattern.search(op_name):
      return label
  if "broadcast" in name:
    return "zero-fills (broadcast into fresh buffers)"
  if "dynamic-update-slice" in name or "dynamic-slice" in name:
    return "scan slicing and residual stacking"
  if name.startswith("dot") or "ynn_fusion" in name:
    return "other matmuls (projections, router, LM head)"
  if any(k in name for k in ("gather", "scatter", "sort")):
    return "gathers, scatters, sorts"
  return "elementwise and other fusions"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="cpu-moe", choices=sorted(PRESETS))
  p.add_argument("--steps", type=int, default=3, help="traced steps")
  p.add_argument("--batch", type=int)
  p.add_argument("--seq", type=int)
  args = p.parse_args(argv)

  import jax

  spec = dict(PRESETS[args.preset])
  spec.update({k: getattr(args, k) for k in ("batch", "seq") if getattr(args, k) is not None})
  compiled, state, batch, _, _, compile_s = jaxtrain_step(spec)
  for _ in range(3):  # warm-up: first runs allocate and fault in everything once
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)

  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  step_ms = (time.perf_counter() - t0) / args.steps * 1e3
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.steps

  op_names = {m.group(1): m.group(2)
              for m in re.finditer(r'%([\w.\-]+) = [^\n]*?op_name="([^"]+)"', compiled.as_text())}
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    trace_file = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
    events = json.load(gzip.open(trace_file))["traceEvents"]

  per_category, per_op = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(("$", "Thunk")) or "ThreadPool" in name:
      continue
    per_category[categorize(name, op_names.get(name, ""))] += e["dur"] / 1e3 / args.steps
    per_op[name] += e["dur"] / 1e3 / args.steps
  total = sum(per_category.values())

  print(f"preset {args.preset}: batch {spec['batch']} x seq {spec['seq']}, {spec['dtype']}, "
        f"{jax.devices()[0].device_kind}; compile {compile_s:.1f} s")
  print(f"step {step_ms:.1f} ms untraced; {faults:,.0f} minor page faults per step "
        f"({faults * resource.getpagesize() / 2**20:,.0f} MB of freshly mapped pages)")
  print("\n| where (op time summed over threads, traced) | ms/step | share |\n|---|---|---|")
  for label, ms in per_category.most_common():
    print(f"| {label} | {ms:.1f} | {ms / total:.1%} |")
  print("\nlargest ops:")
  for name, ms in per_op.most_common(8):
    print(f"  {ms:7.1f} ms  {name}  {op_names.get(name, '')[-70:]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
