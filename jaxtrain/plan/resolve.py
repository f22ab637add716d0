"""`auto` in a run config: the planner picks the mesh sizes, remat policy and micro-batch split
(and the loss vocabulary chunk that goes with them) before the mesh is built, and a config that
cannot fit is refused before anything compiles, saying by how much and what would make it fit.

    config, chosen = resolve_auto(config)            # what the Trainer does first
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from ml_collections import ConfigDict

from jaxtrain.config import ConfigError, is_auto
from jaxtrain.parallel.mesh import AXES
from jaxtrain.parallel.mesh import validate as mesh_validate
from jaxtrain.plan import candidates as cands
from jaxtrain.plan.hardware import Device, local_device
from jaxtrain.plan.memory import Memory, gib, predict
from jaxtrain.plan.planner import Option, Plan, budget_of, make_plan
from jaxtrain.plan.report import format_plan, no_fit_message
from jaxtrain.plan.state import MeshShape
from jaxtrain.plan.workload import Candidate, Workload

log = logging.getLogger("jaxtrain.plan")
MODEL_ERROR = 0.10  # the memory model's validated error (experiments/validate_plan.py)


def has_auto(config) -> bool:
  return (any(is_auto(config.mesh[a]) for a in AXES) or is_auto(config.model.remat)
          or is_auto(config.train.micro_batches))


def apply(config, candidate: Candidate) -> ConfigDict:
  """A copy of `config` running `candidate` (locked like any loaded config)."""
  out = copy.deepcopy(config)
  with out.unlocked():
    for axis in AXES:
      out.mesh[axis] = int(candidate.mesh[axis])
    out.model.remat = candidate.remat
    out.train.micro_batches = int(candidate.micro_batches)
    out.train.loss_vocab_chunk = int(candidate.vocab_chunk)
    out.model.ffn_chunk = int(candidate.ffn_chunk)
  mesh_validate(out)
  out.lock()
  return out


def fixed_candidate(config, devices: int) -> Candidate:
  """The candidate a config without "auto" runs (-1 resolved against `devices`)."""
  from jaxtrain.parallel.mesh import axis_sizes, check_sizes
  sizes = axis_sizes(config.mesh, devices)
  check_sizes(config, sizes)  # the mesh's own errors first (they name the sizes at fault)
  return Candidate(MeshShape(sizes), config.model.remat, int(config.train.micro_batches),
                   min(int(config.train.loss_vocab_chunk), int(config.model.vocab_size)), int(config.model.ffn_chunk))


def fit_hints(workload: Workload, candidate: Candidate, device: Device, devices: int, budget: float) -> list[str]:
  """What would make `candidate` fit: another remat policy, more micro-batches, a smaller loss
  chunk, more devices, or shorter sequences (each checked with the memory model)."""
  hints = []

  def fits(c: Candidate, w: Workload = workload) -> float | None:
    total = predict(w, c, device.platform).total
    return total if total <= budget else None

  for remat in cands.REMAT_ORDER:
    if remat != candidate.remat and (device.offload or remat not in cands.OFFLOAD):
      total = fits(dataclasses.replace(candidate, remat=remat))
      if total:
        hints.append(f"model.remat={remat} ({gib(total)})")
        break
  split = candidate.mesh["data"] * candidate.mesh["fsdp"] * candidate.mesh["expert"]
  for m in cands.divisors(workload.global_batch):
    if m > candidate.micro_batches and (workload.global_batch // m) % split == 0:
      total = fits(dataclasses.replace(candidate, micro_batches=m))
      if total:
        hints.append(f"train.micro_batches={m} ({gib(total)})")
        break
  for chunk in cands.vocab_chunks(workload):
    if chunk < candidate.vocab_chunk:
      total = fits(dataclasses.replace(candidate, vocab_chunk=chunk))
      if total:
        hints.append(f"train.loss_vocab_chunk={chunk} ({gib(total)})")
        break
  for chunk in cands.ffn_chunks(workload, always=True):
    if chunk and chunk != candidate.ffn_chunk:
      total = fits(dataclasses.replace(candidate, ffn_chunk=chunk))
      if total:
        hints.append(f"model.ffn_chunk={chunk} ({gib(total)})")
        break
  for factor in (2, 4, 8, 16):
    sizes = dict(candidate.mesh.shape)
    sizes["fsdp"] *= factor
    total = fits(dataclasses.replace(candidate, mesh=MeshShape(sizes)),
                 _with(workload, global_batch=workload.global_batch * factor))
    if total:
      hints.append(f"{devices * factor} devices with fsdp={sizes['fsdp']} and the same rows per device "
                   f"({gib(total)})")
      break
  for div in (2, 4, 8):
    if workload.seq_len % div == 0 and workload.seq_len // div >= 256:
      total = fits(candidate, _with(workload, seq_len=workload.seq_len // div))
      if total:
        hints.append(f"data.seq_len={workload.seq_len // div} ({gib(total)})")
        break
  return hints


def _with(workload: Workload, **changes) -> Workload:
  return dataclasses.replace(workload, **changes)


def check_fits(config, devices: int, device: Device | None = None) -> Memory:
  """The predicted memory of a fully specified config; ConfigError when it cannot fit (beyond
  the model's error), naming the shortfall and what would fit instead. Compiles nothing."""
  device = device or local_device(devices)
  workload = Workload.from_config(config)
  candidate = fixed_candidate(config, devices)
  mem = predict(workload, candidate, device.platform)
  budget = budget_of(device)
  if mem.total > budget * (1 + MODEL_ERROR):
    plan = Plan(workload, device, devices, budget, [], [], Option(candidate, mem, None))
    raise ConfigError("config does not fit: " + no_fit_message(
        plan, fit_hints(workload, candidate, device, devices, budget)) +
        " (train.check_memory=False skips this check.)")
  if mem.total > budget:
    log.warning("predicted memory %s is within the planner's error of the budget %s: the run may not fit",
                gib(mem.total), gib(budget))
  return mem


def resolve_auto(config, devices: int | None = None, device: Device | None = None) -> tuple[ConfigDict, Plan]:
  """Replaces every "auto" with the planner's choice for `devices` devices of kind `device`
  (default: this run's). Raises ConfigError when no candidate fits."""
  if devices is None:
    import jax
    devices = jax.device_count()
  device = device or local_device(devices)
  workload = Workload.from_config(config)
  plan = make_plan(workload, devices, device, progress=lambda line: log.info("planner: %s", line))
  if plan.best is None:
    hints = []
    if plan.closest is not None:
      hints = fit_hints(workload, plan.closest.candidate, device, devices, plan.budget)
    raise ConfigError("no plan fits: " + no_fit_message(plan, hints))
  best = plan.best
  log.info("planner: %s; predicted %s per device (budget %s), %.3f s per step, %s tokens/s per device",
           best.candidate.describe(), gib(best.memory.total), gib(plan.budget), best.step,
           f"{best.time.tokens_per_sec_per_device:,.0f}")
  return apply(config, best.candidate), plan


__all__ = ["MODEL_ERROR", "apply", "check_fits", "fit_hints", "fixed_candidate", "format_plan", "has_auto",
           "resolve_auto"]
