"""The DeepSeek-V3 and GPT-OSS tiny configs train through the CLI on 1 device and on 8 simulated
devices with expert parallelism, with matching losses; the router correction biases (model
state) move, are checkpointed and restore; the big recipes load and describe the real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, xla_flags

STEPS = 4
COMMON = [f"--config.train.steps={STEPS}", "--config.train.log_every=1", "--config.train.progress=false",
          "--config.sample.enabled=false", "--config.train.warmup_steps=1"]


def run_cli(config: str, workdir: str, *overrides: str, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", "--config", config, f"--config.workdir={workdir}",
                         *COMMON, *overrides], capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc


def train_records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("config, mesh", [
    ("configs/deepseek_v3_tiny.py", ("--config.mesh.fsdp=1", "--config.mesh.expert=8")),
    ("configs/gpt_oss_tiny.py", ("--config.mesh.fsdp=2", "--config.mesh.expert=4")),
])
def test_tiny_config_trains_on_1_and_8_devices_with_matching_losses(config, mesh, tmp_path):
  one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
  deepseek = "deepseek" in config
  # The 1-device run also evaluates and checkpoints (DeepSeek: the router biases travel in it).
  run_cli(config, one, "--config.eval.batches=1", f"--config.checkpoint.enabled={deepseek}")
  proc = run_cli(config, eight, *mesh, "--config.eval.batches=0", "--config.checkpoint.enabled=false", devices=8)
  assert "'expert': " + mesh[1].split("=")[1] in proc.stderr
  a, b = train_records(one), train_records(eight)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
  la, lb = np.array([r["loss"] for r in a]), np.array([r["loss"] for r in b])
  print(f"CLI {os.path.basename(config)}: losses 1 device {la.round(6).tolist()}, 8 devices {lb.round(6).tolist()}")
  np.testing.assert_allclose(lb, la, rtol=2e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in a], rtol=1e-4)
  assert la[-1] < la[0]
  if deepseek:
    assert "moe/seq_aux_loss" in a[0] and len(a[0]["moe/load_cv"]) == 2
    _check_router_bias_checkpoint(config, one)


def _check_router_bias_checkpoint(config: str, workdir: str):
  """The score-correction biases moved by +-rate per step, were saved with the TrainState and
  come back on resume (Trainer restore) and through the converters (export reads them)."""
  import jax

  import jaxtrain
  from jaxtrain.converters import load_params
  from jaxtrain.models.config import ModelConfig
  cfg = jaxtrain.load_config(config, overrides=[f"--config.workdir={workdir}", *COMMON])
  rate = cfg.model.router_bias_update_rate
  _, model_state = load_params(workdir, ModelConfig.from_config(cfg.model, cfg.kernels), with_state=True)
  biases = np.stack([np.asarray(x) for x in jax.tree.leaves(model_state)])
  assert np.abs(biases).max() > 0 and np.abs(biases).max() <= STEPS * rate + 1e-7
  np.testing.assert_allclose(biases / rate, np.round(biases / rate), atol=1e-3)  # whole steps of +-rate
  trainer = jaxtrain.Trainer(cfg)
  trainer._build()
  state, _ = trainer._restore_or_init()
  assert int(state.step) == STEPS
  restored = np.stack([np.asarray(x) for x in jax.tree.leaves(state.model_state)])
  np.testing.assert_array_equal(restored, biases)
  trainer.checkpointer.close()


def _param_count(path: str) -> float:
  import jax

  from jaxtrain import load_config
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.models import factory
  cfg = load_config(path, init_from_must_exist=False)
  _, params, _ = factory.abstract_model(ModelConfig.from_config(cfg.model, cfg.kernels))
  return sum(x.size for x in jax.tree.leaves(params)) / 1e9


@pytest.mark.parametrize("path, billions, arch", [
    ("configs/qwen3_30b_a3b_sft.py", 30.53, "qwen3_moe"),
    ("configs/moonlight_16b_a3b_sft.py", 15.96, "deepseek_v3"),
    ("configs/gpt_oss_20b_sft.py", 20.91, "gpt_oss"),
    ("configs/qwen3_30b_a3b_tiny.py", 0.0, "qwen3_moe"),
    ("configs/deepseek_v3_tiny.py", 0.0, "deepseek_v3"),
    ("configs/gpt_oss_tiny.py", 0.0, "gpt_oss"),
])
def test_recipes_load_and_describe_their_models(path, billions, arch):
  """Every recipe loads and validates (big ones without their checkpoint present) and the big
  ones have the published parameter counts (Qwen3-30B-A3B 30.5B, Moonlight-16B-A3B 16.0B,
  gpt-oss-20b 20.9B), so their architecture fields are the real models'."""
  from jaxtrain import load_config
  cfg = load_config(path, init_from_must_exist=False)
  assert cfg.model.arch == arch
  if billions:
    assert _param_count(path) == pytest.approx(billions, abs=0.01)
    assert cfg.model.remat == "full" and cfg.model.dtype == "bfloat16"
