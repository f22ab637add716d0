"""End to end through the CLI: DPO with LoRA adapters on experts (configs/dpo_tiny.py) logs the
reward metrics, resumes bit-identically, exports a PEFT adapter and merged weights, and a new
run continues from the exported adapter."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, xla_flags

pytestmark = pytest.mark.slow
SMALL = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.moe_intermediate_size=32",
         "--config.model.head_dim=8", "--config.data.seq_len=48", "--config.train.global_batch=4",
         "--config.train.schedule=constant", "--config.train.warmup_steps=0", "--config.train.log_every=1",
         "--config.train.progress=false", "--config.sample.enabled=false", "--config.eval.batches=1",
         "--config.checkpoint.every=2"]


def _run(*args, module="jaxtrain.main"):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _train(workdir, steps, *extra):
  return _run("--config", os.path.join(REPO, "configs", "dpo_tiny.py"), f"--config.workdir={workdir}",
              f"--config.train.steps={steps}", *SMALL, *extra)


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]


def test_dpo_lora_cli_resume_export_and_continue(tmp_path):
  full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
  proc = _train(full, 4)
  assert "optimizer state" in proc.stderr and "frozen" in proc.stderr  # memory report line
  _train(parts, 2)
  _train(parts, 4)  # resumes from step 2 (adapters, optimizer, data position; the base is rebuilt)
  a, b = _records(full), _records(parts)
  assert [r["step"] for r in a] == [1, 2, 3, 4]
  for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
    assert [r[key] for r in a] == [r[key] for r in b if r["step"] > 0][-4:], key
  assert a[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # new adapters: policy == reference

  adapter = str(tmp_path / "adapter")
  _run("export-hf", "--ckpt", full, "--out", adapter, "--adapter", "--no-progress", module="jaxtrain.converters")
  config = json.load(open(os.path.join(adapter, "adapter_config.json")))
  assert config["r"] == 8 and config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
  merged = str(tmp_path / "merged")
  _run("export-hf", "--ckpt", full, "--out", merged, "--merge", "--no-progress", module="jaxtrain.converters")
  assert os.path.exists(os.path.join(merged, "config.json"))
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.converters", "export-hf", "--ckpt", full, "--out",
                         str(tmp_path / "plain")], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 1 and "--adapter" in proc.stderr

  # Continue from the exported adapter: the first step's policy is the trained one (not the base).
  cont = str(tmp_path / "cont")
  _train(cont, 1, f"--config.lora.init_from={adapter}", "--config.lora.targets=q_proj,k_proj,v_proj,o_proj,experts")
  assert _records(cont)[0]["loss"] != pytest.approx(np.log(2), abs=1e-4)
