"""Multi-host on one machine: two processes (4 CPU devices each, gloo collectives) joined by
`jax.distributed.initialize` train the same loss curve as one process with the same global
batch, each feeding only its own rows; their collectively written checkpoint restores in a
1-process, 1-device run, which continues the curve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from tests.parallel.conftest import _result, _start, xla_flags

WORKER = """
import json
from jaxtrain.parallel import distributed
assert distributed.initialize()  # from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
import jax
from tests.parallel import driver
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
r = driver.curve({{"fsdp": 4, "expert": 2}}, steps=6, save=({ckpt!r}, 5))
print("RESULT " + json.dumps({{**r, "rank": jax.process_index()}}))
"""

SINGLE = """
import json, jax
from tests.parallel import driver
assert jax.process_count() == 1
ref = driver.curve({{}}, devices=1, steps=6)
resumed = driver.curve({{}}, devices=1, steps=1, start=5, total=6, restore=({ckpt!r}, 5))  # reuses ref's step
print("RESULT " + json.dumps({{"ref": ref, "resumed": resumed}}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_and_checkpoint_restores_on_one(tmp_path):
  ckpt = str(tmp_path / "ckpt")
  env = {"JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
  procs = [_start(WORKER.format(ckpt=ckpt), devices=4, env={**env, "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  runs = [_result(p, timeout=400) for p in procs]
  assert sorted(r["rank"] for r in runs) == [0, 1]
  assert all(r["processes"] == 2 and r["devices"] == 8 for r in runs)
  np.testing.assert_array_equal(runs[0]["loss"], runs[1]["loss"])  # one global computation
  multi = runs[0]
  assert multi["all_to_all"] > 0  # expert parallel across the mesh

  single = _result(_start(SINGLE.format(ckpt=ckpt), devices=1))
  np.testing.assert_allclose(multi["loss"], single["ref"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(multi["grad_norm"], single["ref"]["grad_norm"], rtol=1e-5)
  # Step 6 from the 2-process checkpoint of step 5, on one device, continues the same curve.
  np.testing.assert_allclose(single["resumed"]["loss"], multi["loss"][5:], rtol=1e-5)
  np.testing.assert_allclose(single["resumed"]["grad_norm"], multi["grad_norm"][5:], rtol=1e-5)


def _launch(args, envs, timeout=400):
  procs = [subprocess.Popen(args(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envs(i), cwd=REPO)
           for i in range(2)]
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return outs


@pytest.mark.slow
def test_cli_two_processes_train_checkpoint_and_resume(tmp_path):
  """docs/multi-host.md's plain two-host example on one machine, through the real entry point:
  `jaxtrain train ... --coordinator ... --num-processes 2 --process-id i` (2 CPU devices each;
  experts split within a process, fsdp across the two). Each process reads its own data slice;
  metrics and the report are written once; the checkpoint is committed by both together. Then
  the same run launched through the environment (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JOB_COMPLETION_INDEX, as in a Kubernetes Indexed Job) resumes from it."""
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags(2))
  train = [sys.executable, "-m", "jaxtrain.cli", "train", "--config", "tests/configs/tiny.py",
           f"--config.workdir={workdir}", "--config.checkpoint.every=0", "--config.mesh.fsdp=2",
           "--config.mesh.expert=2"]
  port = _free_port()
  outs = _launch(lambda i: [*train, "--config.train.steps=2", "--coordinator", f"localhost:{port}",
                            "--num-processes", "2", "--process-id", str(i)], lambda i: env)
  assert "process 0 of 2 joined" in outs[0][1] and "process 1 of 2 joined" in outs[1][1]
  assert "memory per device" in outs[0][1]
  assert "final train loss" in outs[0][0] and "final train loss" not in outs[1][0]  # one report
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = [json.loads(line) for line in f if "loss" in json.loads(line)]
  assert [r["step"] for r in first] == [1, 2]  # logged once, by process 0
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]

  port = _free_port()
  outs = _launch(lambda i: [*train, "--config.train.steps=3"],
                 lambda i: dict(env, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                JOB_COMPLETION_INDEX=str(i)))
  assert all("resuming from" in err and "step 2" in err for _, err in outs)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if "loss" in json.loads(line)]
  assert [r["step"] for r in records] == [1, 2, 3] and records[:2] == first
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
