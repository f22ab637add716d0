"""Does the vision path learn, end to end on real files? The tiny Qwen3-VL-MoE and InternVL
models of configs/qwen3_vl_tiny.py and configs/internvl_tiny.py train through the command line
(`python -m jaxtrain.main`) on the synthetic set of `jaxtrain.data.vision.synthetic` (PNG
images and mp4 videos of shapes, digits and moving shapes; JSONL chat records), read by the
multimodal data pipeline with each family's processor directory; then held-out answer accuracy
next to the same run on blank pictures (same questions and answers: it can learn only the
answer prior).

Accuracy: a held-out answer counts as right when every one of its loss tokens (the assistant's
answer and end-of-turn tokens) is the model's argmax given the prompt and the preceding answer
tokens, i.e. what greedy decoding would write. Held-out records go through the same pipeline
(eval split of the config's `heldout` source); the blank run is scored on the blank versions.

    python experiments/vlm_synthetic.py --steps 300 --out /tmp/vlm_synthetic [--models qwen3_vl,internvl]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"qwen3_vl": "configs/qwen3_vl_tiny.py", "internvl": "configs/internvl_tiny.py"}


def train(model: str, blank: bool, steps: int, out: str) -> str:
  workdir = os.path.join(out, f"{model}{'_blank' if blank else ''}")
  args = [sys.executable, "-m", "jaxtrain.main", "--config", CONFIGS[model], f"--config.workdir={workdir}",
          f"--config.train.steps={steps}", f"--config.checkpoint.every={steps}", "--config.sample.enabled=false",
          "--config.train.progress=false", f"--config.train.warmup_steps={max(steps // 20, 1)}",
          f"--config.train.log_every={max(steps // 10, 1)}"]
  if blank:
    args += ["--config.data.sources.train.path=runs/vlm_synth/blank/train.jsonl",
             "--config.data.sources.heldout.path=runs/vlm_synth/blank/heldout.jsonl"]
  t0 = time.time()
  subprocess.run(args, cwd=REPO, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  print(f"[vlm_synthetic] trained {workdir} in {time.time() - t0:.0f}s", flush=True)
  return workdir


def score(model: str, workdir: str, blank: bool) -> dict:
  """Held-out answer accuracy (overall and per task) and the final train loss of a run."""
  import jax
  import numpy as np
  from flax import nnx

  import jaxtrain
  from jaxtrain.parallel.mesh import mesh_context
  from jaxtrain.train.step import VISION_INPUTS

  overrides = [f"--config.workdir={workdir}"]
  if blank:
    overrides += ["--config.data.sources.heldout.path=runs/vlm_synth/blank/heldout.jsonl"]
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    config = jaxtrain.load_config(CONFIGS[model], overrides=overrides)
    trainer = jaxtrain.Trainer(config)
    questions = {}
    with open(config.data.sources.heldout.path) as f:
      for line in f:
        r = json.loads(line)
        questions[r["messages"][0]["content"][1]["text"]] = r["task"]
    right, total = collections.Counter(), collections.Counter()
    with mesh_context(trainer.mesh):
      trainer._build()
      state, _ = trainer._restore_or_init()
      model_obj = trainer.plan.parts.policy(state.params, state.frozen, state.model_state)
      graphdef, weights = nnx.split(model_obj)

      @jax.jit
      def predict(weights, batch):
        m = nnx.merge(graphdef, weights)
        vision = {k: batch[k] for k in VISION_INPUTS if k in batch}
        h, _, _ = m.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"],
                                  positions=batch["positions"], **vision)
        return m.logits(h).argmax(-1)

      with trainer.objective.pipeline(config, "eval", trainer.tokenizer, 0, 1) as it:
        for batch in it:
          pred = np.asarray(predict(weights, trainer._device_batch(batch)))
          for r in range(pred.shape[0]):
            seg = batch["segment_ids"][r]
            for d in set(seg[seg > 0].tolist()):
              doc = seg == d
              mask = doc & (batch["loss_mask"][r] > 0)
              if not mask.any():
                continue
              text = trainer.tokenizer.decode(batch["input_ids"][r][doc].tolist())
              task = next((t for q, t in questions.items() if q in text), "?")
              total[task] += 1
              right[task] += bool((pred[r][mask] == batch["target_ids"][r][mask]).all())
  finally:
    os.chdir(cwd)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = [r["loss"] for r in records if "loss" in r]
  return {"model": model, "blank": blank, "accuracy": sum(right.values()) / max(sum(total.values()), 1),
          "samples": sum(total.values()), "per_task": {t: (right[t] / total[t], total[t]) for t in sorted(total)},
          "final_loss": losses[-1] if losses else None}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--models", default="qwen3_vl,internvl")
  parser.add_argument("--blank", default="no,yes", help="which runs: no (pictures), yes (blank), or both")
  parser.add_argument("--out", default="/tmp/vlm_synthetic")
  parser.add_argument("--score-only", action="store_true", help="score existing runs in --out")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for model in args.models.split(","):
    for blank in [b == "yes" for b in args.blank.split(",")]:
      workdir = os.path.join(args.out, f"{model}{'_blank' if blank else ''}")
      if not args.score_only:
        train(model, blank, args.steps, args.out)
      row = score(model, workdir, blank)
      rows.append(row)
      print(json.dumps(row), flush=True)
  with open(os.path.join(args.out, f"results_{args.models.replace(',', '_')}_{args.blank.replace(',', '_')}.json"),
            "w") as f:
    json.dump(rows, f, indent=1)
  tasks = sorted({t for r in rows for t in r["per_task"]})
  print("| model | pictures | " + " | ".join(tasks) + " | all | final loss |")
  print("|---|---|" + "---|" * len(tasks) + "---|---|")
  for r in rows:
    cells = [f"{100 * r['per_task'][t][0]:.1f} % ({r['per_task'][t][1]})" if t in r["per_task"] else "-"
             for t in tasks]
    print(f"| {r['model']} | {'blank' if r['blank'] else 'real'} | " + " | ".join(cells) +
          f" | **{100 * r['accuracy']:.1f} %** | {r['final_loss']:.3f} |")


if __name__ == "__main__":
  main()
