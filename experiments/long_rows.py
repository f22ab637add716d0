"""Long rows without sequence parallelism: one row of up to 64k tokens of an activation-dominated
MoE model on one device, within the memory the planner predicts.

What keeps the step's memory linear in the row length T: the loss in vocabulary chunks
(`train.loss_vocab_chunk`), blockwise attention (`kernels.attention=chunked`), remat of each
layer (`model.remat=full`), the MLP / experts in sequence chunks (`model.ffn_chunk`); host offload
of saved activations is a no-op on the CPU (its host memory is its device memory).

Part 1 (nothing runs): for each T the real train step is compiled for one CPU device and XLA's
peak (`compiled.memory_analysis()`) printed next to the planner's prediction
(`plan.memory.predict`) and per token; the same model without any of the above ("plain":
remat none, XLA reference attention, no ffn chunk, the loss over the whole vocabulary) at the
smaller lengths shows what they save.
Part 2 (runs): `--steps` optimizer steps at `--run-seq` through the Trainer (a subprocess each:
its own peak RSS), with `train.device_memory_gib` set a little above the prediction (the
trainer's fit check accepts it); the same steps with another chunking (ffn_chunk and
loss_vocab_chunk halved, attention blocks doubled) and the largest loss difference; and the
fit check's refusal of a budget below the prediction.

    python experiments/long_rows.py                                   # the RESULTS.md tables
    python experiments/long_rows.py --seqs 256,1024 --plain-seqs 256 --run-seq 1024 --steps 1

Data: the Python standard library's source, byte-tokenized and packed into rows of T tokens
(the default `python_stdlib` source: nothing to download).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Activation-dominated at long T: 2 layers of 16 experts top-4 (every token's expert
# intermediates are 4 x 256 wide) on a 256-wide residual stream, one attention head (blockwise
# attention's FLOPs grow as T^2: 64k tokens of 2 layers is ~2 min per step on 2 shared cores).
MODEL = dict(arch="qwen3_moe", vocab_size=8192, hidden_size=256, num_layers=2, num_heads=1, num_kv_heads=1,
             head_dim=32, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=256, rope_theta=1e6)

# Settings that keep memory linear in T: (model fields, train fields, kernels.attention, attention block).
CHUNKINGS = {
    "chunked": (dict(remat="full", ffn_chunk=4096), dict(loss_vocab_chunk=2048), "chunked", 512),
    # The same step at another chunking: its losses must match "chunked" to float32 rounding.
    "rechunked": (dict(remat="full", ffn_chunk=2048), dict(loss_vocab_chunk=1024), "chunked", 1024),
    # None of it: what the step needs without chunking and remat.
    "plain": (dict(remat="none", ffn_chunk=0), dict(loss_vocab_chunk=MODEL["vocab_size"]), "xla", 512),
}


def make_config(seq: int, chunking: str, *, steps: int = 1, workdir: str = "", memory_gib: float = 0.0):
  from jaxtrain.train.run_config import load_config
  model, train, attention, _ = CHUNKINGS[chunking]
  return load_config(base={
      "workdir": workdir or "runs/long_rows",
      "model": {**MODEL, **model},
      "kernels": {"attention": attention},
      "data": {"seq_len": seq, "tokenizer": "byte"},
      "train": {"global_batch": 1, "steps": steps, "log_every": 1, "warmup_steps": 1, "lr": 1e-3,
                "progress": False, "device_memory_gib": memory_gib, **train},
      "eval": {"batches": 0},
      "checkpoint": {"enabled": False},
      "sample": {"enabled": False},
      "logging": {"tensorboard": False},
  })


def set_attention_block(chunking: str) -> None:
  from jaxtrain.kernels import attention_chunked
  block = CHUNKINGS[chunking][3]
  attention_chunked.BLOCK_Q = attention_chunked.BLOCK_K = block


def compiled_peak(seq: int, chunking: str) -> dict:
  """XLA's peak of the compiled step and the planner's prediction (bytes, one device)."""
  import jax
  from jaxtrain.plan import memory as plan_memory
  from jaxtrain.plan.workload import Workload, candidate_from_config
  from jaxtrain.train.compiled import compile_train_step, step_memory
  set_attention_block(chunking)
  config = make_config(seq, chunking)
  t0 = time.perf_counter()
  predicted = plan_memory.predict(Workload.from_config(config), candidate_from_config(config), "cpu")
  compiled, _ = compile_train_step(config, devices=jax.devices()[:1])
  xla = step_memory(compiled)
  return {"seq": seq, "chunking": chunking, "xla": xla.peak, "arguments": xla.arguments,
          "predicted": predicted.total, "breakdown": predicted.as_dict(), "seconds": time.perf_counter() - t0}


def worker(spec: dict) -> dict:
  """One Trainer run in this process (Python API): losses, XLA peak, prediction, peak RSS."""
  from jaxtrain import Trainer
  from jaxtrain.config import ConfigError
  set_attention_block(spec["chunking"])
  with tempfile.TemporaryDirectory() as workdir:
    config = make_config(spec["seq"], spec["chunking"], steps=spec["steps"], workdir=workdir,
                         memory_gib=spec["memory_gib"])
    t0 = time.perf_counter()
    try:
      summary = Trainer(config).fit()
    except ConfigError as e:
      return {"refused": str(e), "seconds": time.perf_counter() - t0}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
  steps = [r for r in records if "loss" in r]
  return {"losses": [r["loss"] for r in steps], "step_time": [r.get("step_time") for r in steps],
          "xla": steps[-1].get("memory/xla_peak_bytes"), "predicted": steps[-1].get("memory/predicted_bytes"),
          "compile_s": summary.get("compile_seconds"), "seconds": time.perf_counter() - t0,
          "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_worker(spec: dict, timeout: float) -> dict:
  proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                        timeout=timeout)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"worker {spec} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def mib(n) -> str:
  return "-" if n is None else f"{n / 2**20:,.1f}"


def peak_table(rows: list[dict]) -> str:
  out = ["| T | chunking | XLA peak MiB | predicted MiB | error | XLA KiB/token | activations KiB/token | "
         "saved act. MiB | layer bwd MiB | loss MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    b = r["breakdown"]
    out.append(f"| {r['seq']:,} | {r['chunking']} | {mib(r['xla'])} | {mib(r['predicted'])} | "
               f"{100 * (r['predicted'] / r['xla'] - 1):+.1f}% | {r['xla'] / r['seq'] / 1024:.1f} | "
               f"{(r['xla'] - r['arguments']) / r['seq'] / 1024:.1f} | {mib(b['saved'])} | {mib(b['layer_work'])} | "
               f"{mib(b['loss'])} |")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seqs", default="4096,16384,65536", help="row lengths of the compiled-peak table")
  p.add_argument("--plain-seqs", default="4096,16384", help="row lengths also compiled without chunking/remat")
  p.add_argument("--run-seq", type=int, default=0, help="row length of the runs (default: the largest of --seqs)")
  p.add_argument("--steps", type=int, default=2, help="optimizer steps per run (0 = no runs)")
  p.add_argument("--margin", type=float, default=0.05, help="budget above the prediction for the accepted run")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
  p.add_argument("--json", action="store_true", help="also print every result as JSON")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(json.loads(args.worker))), flush=True)
    return 0

  seqs = [int(s) for s in args.seqs.split(",") if s]
  plain = [int(s) for s in args.plain_seqs.split(",") if s]
  rows = [compiled_peak(t, "chunked") for t in seqs] + [compiled_peak(t, "plain") for t in plain]
  print(peak_table(rows), flush=True)
  if args.json:
    print(json.dumps(rows))
  chunked = [r for r in rows if r["chunking"] == "chunked"]
  if len(chunked) > 1:
    first, last = chunked[0], chunked[-1]
    growth = (last["xla"] - last["arguments"]) / max(first["xla"] - first["arguments"], 1)
    print(f"\nactivation peak (XLA peak - arguments) grows {growth:.2f}x for {last['seq'] / first['seq']:.0f}x "
          f"the tokens ({first['seq']:,} -> {last['seq']:,})", flush=True)
  if args.steps <= 0:
    return 0

  T = args.run_seq or max(seqs)
  by_seq = {r["seq"]: r for r in chunked}
  predicted = by_seq[T]["predicted"] if T in by_seq else compiled_peak(T, "chunked")["predicted"]
  budget = math.ceil(predicted * (1 + args.margin) / 2**30 * 1000) / 1000  # GiB, 3 decimals
  low = math.floor(predicted * 0.8 / 2**30 * 1000) / 1000
  runs = {}
  for name, chunking, gib in (("accepted", "chunked", budget), ("rechunked", "rechunked", budget)):
    runs[name] = run_worker({"seq": T, "chunking": chunking, "steps": args.steps, "memory_gib": gib}, args.timeout)
    print(f"run {name}: {json.dumps(runs[name])}", flush=True)
  refused = run_worker({"seq": T, "chunking": "chunked", "steps": args.steps, "memory_gib": low}, args.timeout)
  a, b = runs["accepted"], runs["rechunked"]
  diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
  print(f"\n| run (T = {T:,}, 1 device) | train.device_memory_gib | fit check | XLA peak MiB | predicted MiB | "
        f"peak RSS MiB | compile s | s/step | losses |\n|---|---|---|---|---|---|---|---|---|")
  for name, r, gib in (("chunked", a, budget), ("rechunked", b, budget)):
    model, train, _, block = CHUNKINGS[name]
    desc = f"{name}: ffn_chunk {model['ffn_chunk']}, loss_vocab_chunk {train['loss_vocab_chunk']}, attn block {block}"
    times = [t for t in r["step_time"] if t]
    print(f"| {desc} | {gib} | accepted | {mib(r['xla'])} | {mib(r['predicted'])} | {mib(r['rss'])} | "
          f"{r['compile_s']:.0f} | {sum(times) / max(len(times), 1):.1f} | "
          f"{', '.join(f'{x:.6f}' for x in r['losses'])} |")
  reason = refused.get("refused", "NOT REFUSED: " + json.dumps(refused)).splitlines()[0]
  print(f"| chunked | {low} | refused: {reason} | | | | | | |")
  print(f"\nlargest loss difference between the two chunkings over {len(a['losses'])} steps: {diff:.3g}")
  if "refused" in refused:
    print("\nthe fit check's refusal of train.device_memory_gib=%s:\n> %s" % (low, refused["refused"].replace("\n", "\n> ")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
