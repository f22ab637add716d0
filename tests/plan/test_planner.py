"""The planner without compiling the train step (a layer alone is compiled for its peak): what each remat policy keeps, the worst-case MoE
exchange buffers, the interpolation the search uses, the choice under a memory budget, the
error (with its remedies) when nothing fits, and the command line."""

from __future__ import annotations

import dataclasses

import pytest

from jaxtrain.config import ConfigError
from jaxtrain.models.config import LayerKind
from jaxtrain.plan import activations as acts
from jaxtrain.plan.hardware import GiB, cpu_device
from jaxtrain.plan.memory import predict
from jaxtrain.plan.planner import make_plan
from jaxtrain.plan.resolve import check_fits, resolve_auto
from jaxtrain.plan.state import MeshShape
from jaxtrain.plan.workload import Candidate, Workload, traced_model
from jaxtrain.train.run_config import load_config

TINY = "tests/configs/tiny.py"
MIB = 2 ** 20


@pytest.fixture(scope="module")
def workload():
  return Workload.from_config(load_config(TINY, ["--config.data.seq_len=512", "--config.train.global_batch=8"]))


def test_each_remat_policy_keeps_less_and_full_keeps_only_the_layer_input(workload):
  cfg, kind = traced_model(workload, "cpu", "none"), LayerKind(True, 0)
  saved = {p: acts.block_residuals(cfg, kind, p, 2, 512) for p in
           ("none", "save_dots", "save_attention_out", "full", "offload_input")}
  layer_input = 2 * 512 * cfg.hidden_size * 4
  assert saved["full"].activations == layer_input
  assert saved["save_attention_out"].activations == 2 * layer_input  # + the attention block's output
  assert saved["none"].activations > saved["save_dots"].activations > saved["save_attention_out"].activations
  assert saved["offload_input"].activations == 0 and saved["offload_input"].offloaded == layer_input


def test_the_expert_exchange_holds_worst_case_buffers_per_peer(workload):
  cfg, kind = traced_model(workload, "cpu", "none"), LayerKind(True, 0)
  sorted_ = acts.block_residuals(cfg, kind, "none", 1, 512, acts.DispatchPath("sorted"))
  exchange = acts.block_residuals(cfg, kind, "none", 1, 512, acts.DispatchPath("exchange", 4))
  # Receive buffers for 4 peers x min(top-k=2, 1 expert per peer) copies of each of the 512
  # tokens vs top-k copies sorted locally: 1,024 more rows of hidden size 32, in each buffer.
  extra_rows = 4 * 512 * 1 - 512 * 2
  assert exchange.activations - sorted_.activations >= 2 * extra_rows * cfg.hidden_size * 4


def test_the_search_interpolation_matches_exact_traces(workload):
  cfg, kind = traced_model(workload, "cpu", "full"), LayerKind(True, 0)
  path = acts.DispatchPath("sorted")
  for rows, seq in ((2, 3072),):
    exact = acts.layer_memory(cfg, kind, "save_dots", rows, seq, path, exact=True)
    approx = acts.layer_memory(cfg, kind, "save_dots", rows, seq, path, exact=False)
    assert abs(approx[0].activations / exact[0].activations - 1) < 0.05
    assert abs(approx[1] / exact[1] - 1) < 0.05


def test_state_is_exact_and_activations_shrink_with_micro_batches_and_remat(workload):
  mesh = MeshShape({"fsdp": 2, "tensor": 4})
  one = predict(workload, Candidate(mesh, "none", 1, 272), "cpu")
  two = predict(workload, Candidate(mesh, "none", 2, 272), "cpu")
  full = predict(workload, Candidate(mesh, "full", 1, 272), "cpu")
  assert one.params == two.params == full.params and one.opt_state == 2 * one.params
  assert two.local_tokens * 2 == one.local_tokens == 4 * 512  # 8 rows over fsdp=2, then halved
  assert abs(two.saved * 2 / one.saved - 1) < 0.02
  assert full.saved < one.saved / 4 and full.total < one.total


def test_the_fastest_candidate_that_fits_a_budget_wins():
  workload = Workload.from_config(load_config(TINY, ["--config.data.seq_len=512", "--config.train.global_batch=8",
                                                     "--config.mesh=auto", "--config.model.remat=auto",
                                                     "--config.train.micro_batches=auto"]))
  roomy = make_plan(workload, 2, cpu_device(1 * GiB, 2))
  assert roomy.best.candidate.remat == "none" and roomy.best.memory.total <= GiB
  tight_budget = roomy.best.memory.total * 0.75
  tight = make_plan(workload, 2, cpu_device(tight_budget, 2))
  best = tight.best
  assert best.memory.total <= tight_budget
  assert best.candidate.remat != "none" or best.candidate.micro_batches > 1 or best.candidate != roomy.best.candidate
  assert best.step >= roomy.best.step  # it had to give something up


def test_nothing_fits_is_an_error_with_the_shortfall_and_remedies():
  config = load_config(TINY, ["--config.mesh=auto", "--config.model.remat=full", "--config.data.seq_len=4096"])
  with pytest.raises(ConfigError) as e:
    resolve_auto(config, 2, cpu_device(2 * MIB, 2))
  text = str(e.value)
  assert "Nothing fits in 2.0 MiB per device on 2 x cpu" in text and "more than that" in text
  fixed = load_config(TINY, ["--config.mesh.fsdp=8", "--config.data.seq_len=4096", "--config.train.global_batch=8"])
  small = cpu_device(predict(Workload.from_config(fixed), Candidate(MeshShape({"fsdp": 8}), "none", 1, 272),
                             "cpu").total * 0.6, 8)
  with pytest.raises(ConfigError) as e:
    check_fits(fixed, 8, small)
  text = str(e.value)
  assert "What would make it fit" in text
  assert "model.remat=" in text or "train.micro_batches=" in text
  assert "train.check_memory=False" in text


def test_resolve_auto_fills_in_a_config_the_mesh_accepts():
  from jaxtrain.parallel.mesh import AXES, check_sizes
  config = load_config(TINY, ["--config.mesh=auto", "--config.model.remat=auto", "--config.train.micro_batches=auto"])
  resolved, plan = resolve_auto(config, 2, cpu_device(GiB, 2))
  sizes = {a: resolved.mesh[a] for a in AXES}
  assert all(isinstance(v, int) for v in sizes.values()) and dataclasses.asdict(plan.best.candidate.mesh)["sizes"]
  check_sizes(resolved, sizes)  # what make_mesh checks before building the mesh
  assert resolved.model.remat == plan.best.candidate.remat and resolved.train.micro_batches >= 1


def test_command_line_plans_for_a_device_kind(capsys):
  # `jaxtrain plan` (the console script's subcommand) runs the planner's main(argv).
  from jaxtrain import cli
  assert cli.main(["plan", "--config", TINY, "--device-kind", "H100", "--devices", "2", "--as-configured",
                   "--config.data.seq_len=256", "--config.mesh.fsdp=2"]) == 0
  out = capsys.readouterr().out
  assert "Recommended: mesh" in out and "predicted memory per device" in out and "tokens/s per device" in out
  assert "The config as written" in out  # tiny.py fixes its mesh: evaluated too


def test_long_rows_plan_the_ffn_in_sequence_chunks_when_that_is_what_fits():
  # One 16k-token row on one device: the MoE's dispatch buffers and the MLP's intermediates
  # exist for one chunk at a time, so the layer's backward needs less; a budget between the
  # two makes the planner chunk, and its step time pays one more FFN forward.
  config = load_config(TINY, ["--config.data.seq_len=16384", "--config.train.global_batch=1", "--config.mesh=auto",
                              "--config.model.remat=full", "--config.train.micro_batches=1",
                              "--config.model.moe_intermediate_size=512"])  # the experts' buffers dominate
  workload = Workload.from_config(config)
  mesh = MeshShape({"fsdp": 1})
  whole = predict(workload, Candidate(mesh, "full", 1, 272), "cpu")
  chunked = predict(workload, Candidate(mesh, "full", 1, 272, 4096), "cpu")
  assert chunked.layer_work < 0.5 * whole.layer_work and chunked.saved == whole.saved
  assert chunked.total < 0.5 * whole.total
  budget = (whole.total + chunked.total) / 2
  plan = make_plan(workload, 1, cpu_device(budget, 1))
  assert plan.best.candidate.ffn_chunk and plan.best.memory.total <= budget
  assert resolve_auto(config, 1, cpu_device(budget, 1))[0].model.ffn_chunk == plan.best.candidate.ffn_chunk


def test_the_search_interpolates_a_chunked_ffn_from_two_traces(workload):
  cfg, kind = traced_model(workload, "cpu", "full").replace(ffn_chunk=1024), LayerKind(True, 0)
  path = acts.DispatchPath("sorted")
  exact = acts.layer_memory(cfg, kind, "full", 2, 8192, path, exact=True)
  approx = acts.layer_memory(cfg, kind, "full", 2, 8192, path, exact=False)
  assert abs(approx[0].activations / exact[0].activations - 1) < 0.05
  assert abs(approx[1] / exact[1] - 1) < 0.10
