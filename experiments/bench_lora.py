"""LoRA training step: tokens/s and memory of jaxtrain LoRA (and QLoRA) next to full
fine-tuning, and next to PEFT + transformers on the same model.

Same architecture and batch as experiments/bench_train.py (its presets; transformers gets the
equivalent HF config), AdamW in both frameworks, adapters of the same rank on the same weights:
the attention projections and every routed expert (jaxtrain: one adapter pair per expert inside
the grouped matmuls; PEFT: `target_parameters` on transformers' fused expert weights), or the
dense MLPs for a dense preset. Each run is its own subprocess so its peak memory is its own.
Reports tokens/s (median step after warm-up), peak memory (GPU: peak bytes in use; CPU: peak
RSS of the process, runtime included), and the bytes of parameters + optimizer state + frozen
base that the training state holds.

    python experiments/bench_lora.py                    # CPU: quickstart-sized MoE, rank 16
    python experiments/bench_lora.py --preset gpu-moe --rank 16

Prints a table; with --out (or $OUT set) also writes it as JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import PRESETS, _fmt, preset_spec, run_jaxtrain, run_torch, run_worker  # noqa: E402

RUNS = ("jaxtrain-full", "jaxtrain-lora", "jaxtrain-qlora", "torch-full", "peft-lora")


def _targets(spec: dict) -> tuple[str, list[str], list[str] | None]:
  """(jaxtrain lora.targets, PEFT target_modules, PEFT target_parameters) for the preset."""
  attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
  if spec["model"].get("num_experts", 0):
    return ",".join(attention + ["experts"]), attention, ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
  mlp = ["gate_proj", "up_proj", "down_proj"]
  return ",".join(attention + mlp), attention + mlp, None


def run(name: str, spec: dict, rank: int) -> dict:
  alpha = 2.0 * rank
  targets, modules, parameters = _targets(spec)
  if name.startswith("jaxtrain"):
    lora = {} if name == "jaxtrain-full" else {
        "rank": rank, "alpha": alpha, "targets": targets, "quantize": "nf4" if name == "jaxtrain-qlora" else "none"}
    return run_jaxtrain(spec, lora, name=name)
  if name == "torch-full":
    return run_torch(spec, False, name=name)

  def wrap(model):
    import peft
    return peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                      target_modules=modules, target_parameters=parameters))

  return run_torch(spec, False, wrap=wrap, name=name)


def table(results: list[dict]) -> str:
  """One row per run; `vs full` compares with the same framework's full fine-tuning."""
  full = {r["framework"].split("-")[0]: r for r in results if r["framework"].endswith("-full") and "error" not in r}
  rows = ["| run | trainable params | tokens/s | step ms | peak MB | params + opt + frozen MB | compile s "
          "| tokens/s vs full FT |", "|---|---|---|---|---|---|---|---|"]
  for r in results:
    if "error" in r:
      rows.append(f"| {r['framework']} | error: {r['error']} | | | | | | |")
      continue
    framework = "torch" if r["framework"].startswith(("torch", "peft")) else "jaxtrain"
    base = full.get(framework)
    ratio = r["tokens_per_sec"] / base["tokens_per_sec"] if base else None
    rows.append(f"| {r['framework']} | {_fmt(r['trainable'])} of {_fmt(r['params'])} | {_fmt(r['tokens_per_sec'])} | "
                f"{_fmt(r['step_ms'], '.1f')} | {_fmt(r['peak_mem_mb'])} | {_fmt(r['state_mb'], '.2f')} | "
                f"{_fmt(r.get('compile_s'), '.1f')} | {_fmt(ratio, '.2f')}x |")
  return "\n".join(rows)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: cpu-moe on CPU, gpu-moe on GPU")
  p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
  p.add_argument("--rank", type=int, default=16, help="adapter rank (alpha = 2 * rank)")
  p.add_argument("--steps", type=int)
  p.add_argument("--warmup", type=int)
  p.add_argument("--batch", type=int)
  p.add_argument("--seq", type=int)
  p.add_argument("--timeout", type=float, default=900, help="seconds per run")
  p.add_argument("--out", default=os.environ.get("OUT"), help="directory for results (json, md)")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--spec", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    print(json.dumps(run(args.worker, json.loads(args.spec), args.rank)))
    return 0

  spec = preset_spec(args)
  runs = [r for r in args.runs.split(",") if r]
  unknown = set(runs) - set(RUNS)
  if unknown:
    p.error(f"unknown runs {sorted(unknown)}; choose from {RUNS}")
  print(f"preset {args.preset}: batch {spec['batch']} x seq {spec['seq']}, {spec['dtype']}, rank {args.rank}, "
        f"{spec['steps']} timed steps after {spec['warmup']} warm-up", flush=True)
  results = []
  for name in runs:
    r = run_worker(__file__, name, spec, args.timeout, ("--rank", str(args.rank)))
    results.append(r)
    print(f"  {name}: " + (r.get("error") or f"{r['tokens_per_sec']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, "
                                             f"{r['trainable']:,} trainable"), flush=True)
  text = table(results)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bench_lora_{args.preset}.json"), "w") as f:
      json.dump({"preset": args.preset, "rank": args.rank, "spec": spec, "results": results}, f, indent=2)
    with open(os.path.join(args.out, f"bench_lora_{args.preset}.md"), "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
