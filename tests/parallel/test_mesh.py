"""Mesh configuration errors surface at start-up (config load or `Trainer(config)`), with both
numbers in the message and before anything compiles; the memory report reads per-device bytes
from the shardings; the batch layout check; the multi-process settings."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_python

SCRIPT = r"""
import json, os, jax
from jaxtrain.config import ConfigError
from jaxtrain.train.run_config import load_config
from jaxtrain.train.trainer import Trainer

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.append(event) if "backend_compile" in event else None)
TINY = "tests/configs/tiny.py"
out = {}

def error(overrides, construct=True):
  try:
    config = load_config(TINY, overrides)
    if construct:
      Trainer(config)
  except ConfigError as e:
    return str(e)
  return None

out["product"] = error(["--config.mesh.fsdp=3"])
out["two_free"] = error(["--config.mesh.fsdp=-1", "--config.mesh.data=-1"])
out["experts_static"] = error(["--config.mesh.expert=3", "--config.mesh.fsdp=-1"], construct=False)
out["experts_resolved"] = error(["--config.mesh.fsdp=1", "--config.mesh.expert=-1", "--config.model.num_experts=4"])
out["heads_resolved"] = error(["--config.mesh.fsdp=1", "--config.mesh.sequence=-1"])
out["seq_len"] = error(["--config.mesh.fsdp=1", "--config.mesh.sequence=-1", "--config.model.num_heads=8",
                        "--config.data.seq_len=60"])
out["ulysses_tensor"] = error(["--config.mesh.fsdp=1", "--config.mesh.sequence=4", "--config.mesh.tensor=-1"])
out["ragged_on_cpu"] = error(["--config.mesh.expert_exchange=ragged"])
out["bad_exchange"] = error(["--config.mesh.expert_exchange=fast"], construct=False)
out["ok"] = error(["--config.mesh.fsdp=2", "--config.mesh.expert=2", "--config.mesh.sequence=2"])
out["compiles"] = list(compiles)

# Memory: bytes per device from the shardings of the abstract state, as fsdp grows.
from jaxtrain.parallel import memory
from jaxtrain.parallel.mesh import make_mesh
from jaxtrain.train import state as state_lib
from jaxtrain.models import factory
from jaxtrain.parallel import rules
from jaxtrain.train.optimizer import make_optimizer
from jaxtrain.models.config import ModelConfig
from jaxtrain.checkpoint import abstract_with_shardings
config = load_config(TINY, ["--config.train.global_batch=8"])
mc = ModelConfig.from_config(config.model, config.kernels)
graphdef, abstract, _ = factory.abstract_model(mc)
tx = make_optimizer(config.train)
reports = {}
for fsdp in (1, 2, 4, 8):
  cfg = load_config(TINY, ["--config.train.global_batch=8", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.data={8 // fsdp}"])
  mesh = make_mesh(cfg.mesh, config=cfg)
  psh = rules.param_shardings(abstract, mesh)
  ssh = state_lib.state_shardings(tx, abstract, psh, mesh)
  state = abstract_with_shardings(jax.eval_shape(lambda: state_lib.init_state(abstract, tx, ssh, 0)), ssh)
  reports[fsdp] = memory.report(state, mc, cfg, mesh)
  reports[fsdp]["text"] = memory.format_report(reports[fsdp], mesh, mc.remat)
out["memory"] = reports
out["full_params"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def result():
  out = run_python(SCRIPT, devices=8)
  line = next(l for l in out.splitlines()[::-1] if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_misconfigured_meshes_fail_fast_naming_both_numbers(result):
  assert "3 devices but 8 are available" in result["product"]
  assert "only one mesh axis may be -1" in result["two_free"]
  assert "mesh.expert=3" in result["experts_static"] and "num_experts=4" in result["experts_static"]
  assert "mesh.expert=8" in result["experts_resolved"] and "num_experts=4" in result["experts_resolved"]
  assert "mesh.sequence * mesh.tensor = 8" in result["heads_resolved"] and "num_heads=4" in result["heads_resolved"]
  assert "mesh.sequence=8" in result["seq_len"] and "seq_len=60" in result["seq_len"]
  assert "mesh.sequence * mesh.tensor = 8" in result["ulysses_tensor"] and "num_heads=4" in result["ulysses_tensor"]
  assert "ragged" in result["ragged_on_cpu"] and "padded" in result["ragged_on_cpu"]
  assert "expert_exchange" in result["bad_exchange"] and "fast" in result["bad_exchange"]
  assert result["ok"] is None
  assert result["compiles"] == []  # every error came before any compilation


def test_memory_report_params_and_optimizer_fall_as_fsdp_grows(result):
  mem = {int(k): v for k, v in result["memory"].items()}
  params = [mem[f]["params"] for f in (1, 2, 4, 8)]
  opt = [mem[f]["opt_state"] for f in (1, 2, 4, 8)]
  assert params[0] == result["full_params"]  # fsdp=1: a full copy per device
  assert params == sorted(params, reverse=True) and len(set(params)) == 4
  assert params[3] < params[0] / 4
  assert opt == sorted(opt, reverse=True) and opt[3] < opt[0] / 4
  assert all(m["activations"] > 0 for m in mem.values())
  assert "params" in mem[8]["text"] and "fsdp=8" in mem[8]["text"]


def test_distributed_settings_from_arguments_and_environment(monkeypatch):
  from jaxtrain.parallel import distributed
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
               "OMPI_COMM_WORLD_SIZE", "JOB_COMPLETION_INDEX"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.settings() is None  # a plain single-process run
  assert distributed.settings(num_processes=1) is None
  assert distributed.settings("h:1234", 2, 1) == {"coordinator_address": "h:1234", "num_processes": 2,
                                                  "process_id": 1}
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host:99")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert distributed.settings() == {"coordinator_address": "host:99", "num_processes": 4, "process_id": 3}
  assert distributed.settings(process_id=0)["process_id"] == 0  # arguments win
  monkeypatch.delenv("JAX_PROCESS_ID")
  with pytest.raises(ValueError, match="process id"):
    distributed.settings()
  with pytest.raises(ValueError, match=r"not in \[0, 4\)"):
    distributed.settings(process_id=7)
  monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")  # a Kubernetes Indexed Job's pod
  assert distributed.settings() == {"coordinator_address": "host:99", "num_processes": 4, "process_id": 2}
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  assert distributed.settings() is None  # an Indexed Job alone is no multi-process launch
