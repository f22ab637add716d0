"""End to end: DPO with QLoRA adapters on experts (configs/dpo_tiny.py, NF4 base) through the
CLI logs the reward metrics and resumes bit-identically in a second process; `export-hf
--adapter` / `--merge` (the converters CLI, run in-process) write a PEFT adapter and merged
weights that reproduce the trained model's logits; a run started through the Python API from
the exported adapter continues from the trained adapters exactly."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import jaxtrain
from jaxtrain.converters.__main__ import main as convert
from jaxtrain.models import factory
from jaxtrain.posttrain import peft_io
from tests.helpers import REPO, xla_flags

pytestmark = pytest.mark.slow
CONFIG = os.path.join(REPO, "configs", "dpo_tiny.py")
SMALL = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.moe_intermediate_size=32",
         "--config.model.head_dim=8", "--config.data.seq_len=48", "--config.train.global_batch=4",
         "--config.train.schedule=constant", "--config.train.warmup_steps=0", "--config.train.log_every=1",
         "--config.train.progress=false", "--config.sample.enabled=false", "--config.eval.batches=1",
         "--config.checkpoint.every=2", "--config.lora.quantize=nf4"]
REPORTED = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected")


def _train(workdir, steps):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", "--config", CONFIG, f"--config.workdir={workdir}",
                         f"--config.train.steps={steps}", *SMALL], capture_output=True, text=True, cwd=REPO, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]


def test_dpo_qlora_cli_resume_export_and_continue(tmp_path, capsys):
  run = str(tmp_path / "run")
  proc = _train(run, 4)  # checkpoints at steps 2 and 4
  assert "optimizer state" in proc.stderr and "frozen" in proc.stderr  # memory report line
  first = _records(run)
  assert [r["step"] for r in first] == [1, 2, 3, 4]
  assert first[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # new adapters: policy == reference
  # A second process resumes from step 2 (adapters, optimizer state, data position; the NF4 base
  # is rebuilt and requantized) and repeats steps 3 and 4 bit for bit.
  shutil.rmtree(os.path.join(run, "checkpoints", "4"))
  _train(run, 4)
  resumed = _records(run)
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  for key in REPORTED:
    assert [r[key] for r in resumed] == [r[key] for r in first], key

  adapter, merged = str(tmp_path / "adapter"), str(tmp_path / "merged")
  assert convert(["export-hf", "--ckpt", run, "--out", adapter, "--adapter", "--no-progress"]) == 0
  config = json.load(open(os.path.join(adapter, "adapter_config.json")))
  assert config["r"] == 8 and config["target_parameters"] == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
  assert convert(["export-hf", "--ckpt", run, "--out", merged, "--merge", "--no-progress"]) == 0
  capsys.readouterr()
  assert convert(["export-hf", "--ckpt", run, "--out", str(tmp_path / "plain"), "--no-progress"]) == 1
  assert "--adapter" in capsys.readouterr().err

  # Continue from the exported adapter through the Python API.
  cfg = jaxtrain.load_config(CONFIG, overrides=[f"--config.workdir={tmp_path / 'cont'}", "--config.train.steps=1",
                                                *SMALL, f"--config.lora.init_from={adapter}",
                                                "--config.lora.targets=q_proj,k_proj,v_proj,o_proj,experts"])
  trainer = jaxtrain.Trainer(cfg)
  trainer.fit()
  assert _records(cfg.workdir)[0]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the trained policy
  imported = trainer.plan.import_adapters(adapter, trainer.model_cfg)
  trained_adapters = peft_io.load_run_adapters(run)[0]
  for (path, a), (_, b) in zip(nnx.to_flat_state(imported), nnx.to_flat_state(trained_adapters)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))

  # The merged export computes what the trained QLoRA model computes: adapters over the
  # dequantized NF4 base, not over the full-precision weights it was quantized from.
  parts = trainer.plan.parts
  logits = jax.jit(lambda adapters, base, ids: parts.policy(adapters, base)(ids).logits)
  ids = np.random.default_rng(0).integers(0, 256, (2, 16))
  trained = np.asarray(logits(imported, trainer.state.frozen, ids))
  exported = np.asarray(jaxtrain.from_pretrained(merged)(ids).logits)
  np.testing.assert_allclose(exported, trained, rtol=0, atol=2e-5)
  full_precision = jax.jit(lambda: nnx.state(factory.create(trainer.model_cfg, cfg.seed), nnx.Param))()
  assert np.max(np.abs(np.asarray(logits(imported, full_precision, ids)) - trained)) > 1e-3
