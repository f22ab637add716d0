"""Shared runs for the parallel tests: the training-curve subprocesses (8 simulated CPU devices
each) start once per session, side by side (XLA compiles on one thread), and several tests
read their results.

FLAGS: the CPU backend compiles at -O0 with the classic (non-MLIR) fusion emitters, which
compiles these programs about 4x faster; every reference and every mesh uses the same flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, xla_flags

MATRIX = """
import json, jax
from tests.parallel import driver
init = driver.reference_state()
out = {"ref": driver.curve({}, devices=1, host_state=init)}
for name, sizes in [("fsdp8", {"fsdp": 8}), ("data2_fsdp4", {"data": 2, "fsdp": 4}),
                    ("fsdp2_expert4", {"fsdp": 2, "expert": 4}), ("fsdp4_seq2", {"fsdp": 4, "sequence": 2}),
                    ("fsdp2_expert2_seq2", {"fsdp": 2, "expert": 2, "sequence": 2})]:
  out[name] = driver.curve(sizes, host_state=init, expert_exchange="padded")
print("RESULT " + json.dumps(out))
"""

EXTRAS = """
import json, jax
from jaxtrain import kernels
from tests.parallel import driver
init = driver.reference_state()
out = {}  # compared with MATRIX's 1-device reference (same initial state and batches)
# kv heads (2) fewer than the sequence split (4): repeated before the Ulysses exchange.
out["fsdp2_seq4"] = driver.curve({"fsdp": 2, "sequence": 4}, host_state=init)
# The ragged exchange's offsets, with an all-gather stand-in for ragged_all_to_all; plus
# Ulysses and tensor parallel (expert hidden dim split, one psum).
out["ragged_emulated_expert2_seq2_tensor2"] = driver.curve({"expert": 2, "sequence": 2, "tensor": 2}, host_state=init,
                                                           expert_exchange="ragged_emulated")
# Pallas kernels (interpret mode) inside the shard_maps, with full remat and 2 micro-batches,
# against the same kernels and settings on one device.
pallas = dict(model=dict(gmm_impl="pallas", attention_impl="pallas", remat="full"), micro_batches=2, host_state=init,
              steps=3)
with kernels.interpret_mode():
  out["pallas_ref"] = driver.curve({}, devices=1, **pallas)
  out["pallas_remat_micro2"] = driver.curve({"fsdp": 2, "expert": 2, "sequence": 2}, **pallas)
print("RESULT " + json.dumps(out))
"""


def _start(code: str, devices: int = 8, env: dict | None = None) -> subprocess.Popen:
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices),
                  PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  full_env.update(env or {})
  return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=full_env, cwd=REPO)


def _result(proc: subprocess.Popen, timeout: int = 600) -> dict:
  out, err = proc.communicate(timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{out[-2000:]}\n{err[-6000:]}")
  line = next(l for l in out.splitlines()[::-1] if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])




@pytest.fixture(scope="session")
def curves() -> dict:
  """{"matrix": ..., "extras": ...}: per-mesh training curves (see MATRIX and EXTRAS)."""
  matrix, extras = _start(MATRIX), _start(EXTRAS)
  return {"matrix": _result(matrix), "extras": _result(extras)}
