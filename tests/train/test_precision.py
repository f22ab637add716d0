"""Mixed precision end to end: the quickstart recipe (byte-level Qwen3-MoE-style model on the
Python standard library's sources), scaled down to run 150 steps in seconds, trained three times
on identical batches through the Python API: fp32; bf16 compute with fp32 master weights and
optimizer state (`model.dtype=bfloat16`); and bf16 with FP8 GEMMs (`model.fp8=True`, emulated on
CPU: the same numbers FP8 hardware computes).

Tolerances (measured: experiments/RESULTS.md "Precision"). Trajectories in different precisions
drift apart step by step (single steps differ by up to ~0.3 nats on these 4-sequence batches), so
the curves are compared as means over 50-step windows, and the held-out loss at the end:
- bf16 vs fp32: every window mean and the final held-out loss within 0.06 nats (measured <= 0.03);
- FP8 vs bf16: the same 0.06 nats (measured <= 0.02).
Each run must also learn (loss from ~5.4 to below 3.4) and the runs must really differ (a bf16 or
FP8 setting that silently did nothing would give identical curves)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxtrain
from tests.helpers import REPO

STEPS, WINDOW, TOLERANCE = 150, 50, 0.06
SCALED = ["--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.model.num_heads=2",
          "--config.model.num_kv_heads=1", "--config.model.num_experts=4", "--config.model.moe_intermediate_size=64",
          "--config.model.intermediate_size=128", "--config.data.seq_len=64", "--config.train.global_batch=4",
          f"--config.train.steps={STEPS}", "--config.train.warmup_steps=20", "--config.train.log_every=5",
          "--config.train.progress=False", "--config.checkpoint.enabled=False", "--config.sample.enabled=False",
          "--config.eval.batches=2", "--config.eval.unigram_baseline=False"]


def train(workdir, *extra):
  config = jaxtrain.load_config(f"{REPO}/configs/quickstart.py",
                                overrides=[f"--config.workdir={workdir}", *SCALED, *extra])
  trainer = jaxtrain.Trainer(config)
  summary = trainer.fit()
  losses = [r["loss"] for r in map(json.loads, open(f"{workdir}/metrics.jsonl")) if "loss" in r]
  dtypes = {x.dtype for x in jax.tree.leaves((trainer.state.params, trainer.state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  return np.asarray(losses), summary["eval_loss"], dtypes


@pytest.mark.slow
def test_bf16_and_fp8_training_track_fp32(tmp_path):
  fp32 = train(tmp_path / "fp32")
  bf16 = train(tmp_path / "bf16", "--config.model.dtype=bfloat16")
  fp8 = train(tmp_path / "fp8", "--config.model.dtype=bfloat16", "--config.model.fp8=True")
  assert bf16[2] == {jnp.dtype(jnp.float32)}, "bf16 compute keeps fp32 master weights and optimizer state"
  for name, (losses, eval_loss, _) in (("fp32", fp32), ("bf16", bf16), ("fp8", fp8)):
    assert len(losses) == STEPS // 5 and losses[0] > 5.0 and eval_loss < 3.4, (name, losses[0], eval_loss)
  for name, (a, b) in (("bf16 vs fp32", (bf16, fp32)), ("fp8 vs bf16", (fp8, bf16))):
    windows = np.abs((a[0] - b[0]).reshape(-1, WINDOW // 5).mean(axis=1))
    print(f"PRECISION {name}: window mean diffs {np.round(windows, 4).tolist()}, "
          f"held-out {a[1]:.4f} vs {b[1]:.4f}")
    assert np.any(a[0] != b[0]), f"{name}: identical curves, the setting did nothing"
    assert windows.max() <= TOLERANCE, (name, windows)
    assert abs(a[1] - b[1]) <= TOLERANCE, (name, a[1], b[1])
