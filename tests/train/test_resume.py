"""Exact resume: runs interrupted by SIGKILL or SIGTERM continue bit-identically."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, xla_flags

pytestmark = pytest.mark.slow
CONFIG = os.path.join(REPO, "tests", "configs", "tiny.py")


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "jaxtrain.main", "--config", CONFIG, f"--config.workdir={workdir}",
          "--config.train.steps=24", *extra]


def _env(devices=1):
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))


def _run(workdir, *extra, devices=1):
  proc = subprocess.run(_cmd(workdir, *extra), capture_output=True, text=True, cwd=REPO, env=_env(devices),
                        timeout=600)
  return proc


def _losses(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    record = json.loads(line)
    if "loss" in record:
      out[record["step"]] = record["loss"]
  return out


def _last_step(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  steps = [json.loads(line)["step"] for line in open(path) if line.strip()]
  return max(steps, default=0)


def _committed(workdir):
  path = os.path.join(workdir, "checkpoints")
  return [d for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


def _interrupt(workdir, sig, after_step):
  """Starts a run and sends `sig` once it has logged `after_step` and committed a checkpoint;
  returns (returncode, stderr)."""
  proc = subprocess.Popen(_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=_env())
  deadline = time.time() + 300
  while ((_last_step(workdir) < after_step or not _committed(workdir)) and proc.poll() is None
         and time.time() < deadline):
    time.sleep(0.005)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _losses(workdir)


def test_sigkill_then_restart_is_bit_identical(reference, tmp_path):
  workdir = str(tmp_path)
  code, _ = _interrupt(workdir, signal.SIGKILL, after_step=5)
  assert code == -signal.SIGKILL
  killed_at = _last_step(workdir)
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = _losses(workdir)
  restored_from = int(proc.stderr.split("resuming from")[1].split("step")[1].split()[0])
  assert restored_from % 4 == 0 and restored_from < 24
  assert killed_at > restored_from  # some finished steps were lost and recomputed
  assert resumed == reference  # every step, before and after the restart, bit for bit


def test_sigterm_saves_a_checkpoint_and_resumes_exactly(reference, tmp_path):
  workdir = str(tmp_path)
  code, err = _interrupt(workdir, signal.SIGTERM, after_step=5)
  assert code == 128 + signal.SIGTERM, err[-3000:]
  stopped = int(err.split("stopped at step")[1].split()[0])
  assert str(stopped) in os.listdir(os.path.join(workdir, "checkpoints"))
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"step {stopped}" in proc.stderr.split("resuming from")[1].splitlines()[0]
  assert _losses(workdir) == reference


def test_interrupted_save_is_ignored_and_the_previous_checkpoint_restores(reference, tmp_path):
  workdir = str(tmp_path)
  code, _ = _interrupt(workdir, signal.SIGKILL, after_step=5)
  assert code == -signal.SIGKILL
  latest = max(int(d) for d in _committed(workdir))
  # What a save killed half-way leaves behind: Orbax's temporary directory, never committed.
  ckpts = os.path.join(workdir, "checkpoints")
  partial = os.path.join(ckpts, f"{latest + 4}.orbax-checkpoint-tmp-1700000000")
  shutil.copytree(os.path.join(ckpts, str(latest)), partial)
  os.remove(os.path.join(partial, "commit_success.txt"))
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"step {latest}" in proc.stderr.split("resuming from")[1].splitlines()[0]
  assert _losses(workdir) == reference


def test_checkpoint_from_8_devices_restores_on_1(tmp_path):
  workdir = str(tmp_path)
  proc = _run(workdir, "--config.train.steps=4", "--config.mesh.fsdp=8", devices=8)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run(workdir, "--config.train.steps=6", "--config.mesh.fsdp=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 4" in proc.stderr.split("resuming from")[1].splitlines()[0]
  assert sorted(_losses(workdir)) == [1, 2, 3, 4, 5, 6]
