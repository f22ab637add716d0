"""The planner: for a workload on N devices of a kind, every admissible candidate's predicted
memory and step time, the fastest one that fits, and why the others lose.

Search: meshes are ordered by an optimistic step time (no remat, no gradient accumulation);
each mesh tries remat policies from the fastest (none) to the most frugal, and for each the
fewest micro-batches and largest loss chunk that fit. Meshes whose optimistic time is more than
`SLACK` x the best found are not traced (they cannot win).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from jaxtrain.models import factory
from jaxtrain.plan import candidates as cands
from jaxtrain.plan.hardware import Device
from jaxtrain.plan.memory import Memory, gathered_per_pass, gib, predict
from jaxtrain.plan.state import MeshShape, state_bytes
from jaxtrain.plan.timing import StepTime, step_time
from jaxtrain.plan.workload import Candidate, Workload, local_share, traced_model

USABLE = 0.92  # of a GPU's memory a step may plan to use (the runtime, collectives' buffers, allocator slack)
SLACK = 1.6  # meshes whose optimistic step time exceeds this x the best found are skipped
MAX_OPTIONS = 12  # viable options kept for the report
EXACT = 4  # of which the fastest are traced at their exact shapes


@dataclasses.dataclass(frozen=True)
class Option:
  candidate: Candidate
  memory: Memory
  time: StepTime

  @property
  def step(self) -> float:
    return self.time.step


@dataclasses.dataclass
class Plan:
  workload: Workload
  device: Device
  devices: int
  budget: float  # bytes per device the plan may use
  options: list[Option]  # viable, fastest first (the first is the recommendation)
  rejected: list[tuple[str, str]]  # (what, why it was not viable)
  closest: Option | None  # the smallest-memory candidate evaluated (what to report when nothing fits)
  least_state: tuple[int, MeshShape] | None = None  # the smallest state of any mesh (bytes per device)

  @property
  def best(self) -> Option | None:
    return self.options[0] if self.options else None


def budget_of(device: Device) -> float:
  return device.memory if device.platform == "cpu" else device.memory * USABLE


def _time(workload: Workload, candidate: Candidate, device: Device, mem: Memory) -> StepTime:
  return step_time(workload, candidate, device, local_tokens=mem.local_tokens, grads=mem.grads,
                   gathered_per_pass=mem.gathered_per_pass, host=mem.host)


def _optimistic(workload: Workload, mesh: MeshShape, device: Device, params, stages) -> tuple[float, int]:
  """(step time with no remat and no accumulation, state bytes) of a mesh, without tracing."""
  state = state_bytes(params, mesh, tuple(r for _, r in stages))
  candidate = Candidate(mesh, "none", cands.micro_batch_choices(workload, mesh)[0], cands.vocab_chunks(workload)[0])
  local = local_share(workload, candidate, device.platform)
  gathered = gathered_per_pass(state, stages) if mesh["fsdp"] * mesh["data"] > 1 else 0
  t = step_time(workload, candidate, device, local_tokens=local.tokens, grads=state.grads,
                gathered_per_pass=gathered)
  return t.step, state.params + state.opt_state + state.grads


def make_plan(workload: Workload, devices: int, device: Device, *, budget: float | None = None,
              progress: Callable[[str], None] | None = None) -> Plan:
  """`progress` receives one line per mesh searched (a large model's first traces of a layer
  take tens of seconds each)."""
  budget = budget_of(device) if budget is None else budget
  say = progress or (lambda _line: None)
  t0 = time.perf_counter()
  model = traced_model(workload, device.platform, "none")
  params = factory.abstract_model(model)[1]
  stages = model.stages()
  rejected: list[tuple[str, str]] = []
  ranked = []
  least_state = None
  for mesh in cands.meshes(workload, devices, device):
    t, state = _optimistic(workload, mesh, device, params, stages)
    if least_state is None or state < least_state[0]:
      least_state = (state, mesh)
    if state > budget:
      rejected.append((f"mesh {mesh.describe()}", f"parameters, gradients and optimizer state alone need "
                       f"{gib(state)} per device (budget {gib(budget)})"))
      continue
    ranked.append((t, mesh))
  ranked.sort(key=lambda x: x[0])
  options: list[Option] = []
  closest: Option | None = None
  best_step = math.inf
  for i, (optimistic, mesh) in enumerate(ranked):
    if optimistic > SLACK * best_step:
      rejected.append((f"mesh {mesh.describe()}", f"at best {optimistic:.3g} s per step, vs {best_step:.3g} s"))
      continue
    say(f"mesh {mesh.describe()} ({i + 1} of {len(ranked)} that hold the state), {time.perf_counter() - t0:.0f} s")
    for remat, settings in cands.settings(workload, mesh, device):
      found = None
      for candidate in settings:
        mem = predict(workload, candidate, device.platform, abstract_params=params, exact=False)
        option = Option(candidate, mem, _time(workload, candidate, device, mem))
        if closest is None or mem.total < closest.memory.total:
          closest = option
        if mem.total <= budget:
          found = option
          break
      if found is None:
        rejected.append((f"mesh {mesh.describe()}, remat {remat}",
                         f"needs {gib(closest_for(settings, workload, device, params).memory.total)} per device "
                         f"at its smallest split (budget {gib(budget)})"))
        continue
      options.append(found)
      best_step = min(best_step, found.step)
  options.sort(key=lambda o: (o.step, o.memory.total))
  # The search interpolated the layers' memory in the token count; the kept options are traced
  # at their exact shapes (and dropped if they no longer fit).
  kept = []
  for i, option in enumerate(options[:MAX_OPTIONS]):
    if i < EXACT:
      say(f"exact shapes: {option.candidate.describe()}")
      mem = predict(workload, option.candidate, device.platform, abstract_params=params)
      if mem.total > budget:
        rejected.append((option.candidate.describe(), f"needs {gib(mem.total)} per device (budget {gib(budget)})"))
        continue
      option = Option(option.candidate, mem, _time(workload, option.candidate, device, mem))
    kept.append(option)
  kept.sort(key=lambda o: (o.step, o.memory.total))
  return Plan(workload, device, devices, budget, kept, rejected, closest, least_state)


def closest_for(settings: list[Candidate], workload: Workload, device: Device, params) -> Option:
  """The most frugal setting of a list (most micro-batches, smallest chunk)."""
  candidate = settings[-1]
  mem = predict(workload, candidate, device.platform, abstract_params=params, exact=False)
  return Option(candidate, mem, _time(workload, candidate, device, mem))


__all__ = ["Option", "Plan", "USABLE", "budget_of", "make_plan"]
