"""The quickstart through the command line, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

FAST = ["--config.train.steps=24", "--config.train.global_batch=4", "--config.data.seq_len=128",
        "--config.train.log_every=4", "--config.train.warmup_steps=4", "--config.eval.batches=2",
        "--config.checkpoint.every=12", "--config.sample.max_new_tokens=16", "--config.train.progress=false"]


def run_cli(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxtrain.main", *args], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO, env=env)


@pytest.mark.slow
def test_quickstart_trains_through_the_cli_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_cli("--config", "configs/quickstart.py", f"--config.workdir={workdir}", *FAST)
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(4, 25, 4))
  for key in ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "moe/load_cv", "moe/dropped_frac"):
    assert key in train[0], key
  assert len(train[0]["moe/load_cv"]) == 4  # one entry per MoE layer
  assert train[-1]["loss"] < train[0]["loss"] - 0.5
  assert "held-out loss" in proc.stdout and "unigram baseline" in proc.stdout and "sample:" in proc.stdout
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["steps"] == 24
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "24"]

  # Same command with more steps resumes from step 24 instead of starting over.
  proc = run_cli("--config", "configs/quickstart.py", f"--config.workdir={workdir}", *FAST,
                 "--config.train.steps=28")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "resuming from" in proc.stderr and "step 24" in proc.stderr
  steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert steps[-2:] == [28, 28] and 24 in steps  # train record and eval record of the new last step


def test_unknown_key_fails_fast_with_a_suggestion():
  proc = run_cli("--config", "configs/quickstart.py", "--config.train.stepz=3")
  assert proc.returncode == 2
  assert "train.stepz" in proc.stderr and "'steps'" in proc.stderr


def test_bad_arguments_are_rejected():
  proc = run_cli("--config", "configs/quickstart.py", "--steps=3")
  assert proc.returncode != 0 and "--config.train.steps=100" in proc.stderr
