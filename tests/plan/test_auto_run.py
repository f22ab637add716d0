"""`auto` through the trainer, as a user runs it: the planner picks the mesh, remat policy and
micro-batch split before the mesh is built, the resolved config is what config.json records,
and metrics.jsonl carries the predicted peak next to XLA's own for the compiled step. A config
that cannot fit stops with the planner's message (exit status 2) before anything compiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, xla_flags

TINY = "tests/configs/tiny.py"


def _cli(*args, devices=8, env=None):
  full = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices), **(env or {}))
  return subprocess.run([sys.executable, "-m", "jaxtrain.main", "--config", TINY, *args], capture_output=True,
                        text=True, timeout=600, cwd=REPO, env=full)


@pytest.mark.slow
def test_auto_mesh_remat_and_micro_batches_train_and_record_predicted_and_measured_peak(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _cli("--config.mesh=auto", "--config.model.remat=auto", "--config.train.micro_batches=auto",
              "--config.train.steps=2", "--config.train.global_batch=8", f"--config.workdir={workdir}", devices=2)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "planner: mesh" in proc.stderr and "memory per device, predicted" in proc.stderr
  resolved = json.load(open(os.path.join(workdir, "config.json")))
  sizes = [resolved["mesh"][a] for a in ("data", "fsdp", "expert", "sequence", "tensor")]
  assert all(isinstance(s, int) for s in sizes) and sizes[0] * sizes[1] * sizes[2] * sizes[3] * sizes[4] == 2
  assert resolved["model"]["remat"] != "auto" and isinstance(resolved["train"]["micro_batches"], int)
  record = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][0]
  predicted, measured = record["memory/predicted_bytes"], record["memory/xla_peak_bytes"]
  assert abs(predicted / measured - 1) < 0.25, (predicted, measured)


def test_a_config_that_cannot_fit_stops_before_compiling_with_the_shortfall():
  # 64k-token rows of the tiny model on one simulated device with no remat (~0.7 GiB predicted),
  # planned for a 0.5 GiB device: per-layer remat would fit.
  proc = _cli("--config.data.seq_len=65536", "--config.train.global_batch=1", "--config.mesh.fsdp=1",
              "--config.train.device_memory_gib=0.5", devices=1)
  assert proc.returncode == 2, proc.stderr[-3000:]
  err = proc.stderr
  assert "config does not fit" in err and "more than that" in err and "What would make it fit" in err
  assert "model.remat=" in err
  assert "compiled the train step" not in err
