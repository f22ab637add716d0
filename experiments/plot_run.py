"""The loss curve of a run, from its metrics.jsonl: training loss per logged step, held-out loss,
and a unigram model's held-out loss for scale (computed from the run's data config). The README's
picture is this script on a quickstart run:

    jaxtrain train --config configs/quickstart.py --config.workdir=runs/quickstart
    python experiments/plot_run.py --workdir runs/quickstart --out docs/images/quickstart_loss.png
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxtrain.train.metrics import read_metrics  # noqa: E402


def unigram_baseline(workdir: str) -> float | None:
  from jaxtrain import data as data_lib
  from jaxtrain.train.run_config import from_json
  with open(os.path.join(workdir, "config.json")) as f:
    config = from_json(f.read())
  if not config.eval.unigram_baseline:
    return None
  return data_lib.unigram_loss(config, data_lib.build_tokenizer(config.data))


def plot(workdir: str, out: str, title: str) -> dict:
  records = read_metrics(workdir)
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  baseline = unigram_baseline(workdir)
  fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="#1f77b4", lw=1.6, label="training loss")
  ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o", color="#d62728", ms=6,
          label="held-out loss")
  if baseline is not None:
    ax.axhline(baseline, color="gray", ls="--", lw=1.2, label=f"unigram model ({baseline:.2f})")
  ax.set_xlabel("step")
  ax.set_ylabel("nats / token")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(frameon=False)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out)
  return {"steps": train[-1]["step"], "final_train_loss": train[-1]["loss"],
          "eval_loss": evals[-1]["eval_loss"] if evals else None, "unigram_loss": baseline}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="PNG path")
  parser.add_argument("--title", default="jaxtrain quickstart: 4-layer MoE (8 experts, top-2), "
                                         "byte-level on Python's standard library")
  args = parser.parse_args(argv)
  print(json.dumps(plot(args.workdir, args.out, args.title)))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
