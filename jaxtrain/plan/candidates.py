"""The ways to run a workload on N devices that the planner considers: meshes (data / fsdp /
expert / sequence / tensor), remat policies, micro-batch splits and loss vocabulary chunks,
within what the config fixes (an axis, the policy or the split given as a number stays as
given; "auto" is the planner's to choose; -1 takes the devices the others leave).

A mesh is admissible when the trainer would accept it (parallel/mesh.py's divisibility rules)
and its fast axes stay inside a node: tensor and sequence parallelism exchange activations at
every layer, so they never cross nodes; expert parallelism may.
"""

from __future__ import annotations

import itertools

from jaxtrain.config import is_auto
from jaxtrain.parallel.mesh import AXES
from jaxtrain.plan.hardware import Device
from jaxtrain.plan.state import MeshShape
from jaxtrain.plan.workload import Candidate, Workload

REMAT_ORDER = ("none", "save_dots", "save_attention_out", "offload_dots", "full", "offload_input")  # fastest first
OFFLOAD = ("offload_dots", "offload_input")
MIN_VOCAB_CHUNK = 1024


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def mesh_problems(workload: Workload, sizes: dict[str, int], device: Device) -> list[str]:
  """Why the trainer would refuse (or the planner skips) this mesh; [] when it is admissible."""
  m, problems = workload.model, []
  tp, sp, ep = sizes["tensor"], sizes["sequence"], sizes["expert"]
  if ep > 1 and (m.num_experts <= 0 or m.num_experts % ep):
    problems.append(f"expert={ep} does not divide the {m.num_experts} experts")
  if m.num_heads % tp:
    problems.append(f"tensor={tp} does not divide the {m.num_heads} heads")
  if sp > 1 and (workload.seq_len % sp or m.num_heads % (sp * tp)):
    problems.append(f"sequence={sp} needs seq_len and heads / tensor divisible by it")
  if tp * sp > device.per_node:
    problems.append(f"tensor x sequence = {tp * sp} spans nodes of {device.per_node}")
  return problems


def meshes(workload: Workload, devices: int, device: Device) -> list[MeshShape]:
  """Every admissible mesh of `devices` devices the config allows."""
  fixed = dict(workload.fixed_mesh)
  free = [a for a in AXES if is_auto(fixed[a])]
  rest = [a for a in AXES if fixed[a] == -1]
  given = {a: int(v) for a, v in fixed.items() if not is_auto(v) and v != -1}
  used = 1
  for v in given.values():
    used *= v
  if devices % used:
    return []
  left = devices // used
  if not free:
    if len(rest) > 1:
      return []
    sizes = dict(given, **{a: left for a in rest})
    return [MeshShape(sizes)] if not rest or left >= 1 else []
  if rest:  # -1 with auto axes: -1 takes what the auto axes leave
    free = free + rest
  out = []
  for combo in itertools.product(*(divisors(left) for _ in free)):
    prod = 1
    for c in combo:
      prod *= c
    if prod != left:
      continue
    sizes = dict(given, **dict(zip(free, combo)))
    if not mesh_problems(workload, sizes, device):
      out.append(MeshShape(sizes))
  return out


def remat_choices(workload: Workload, device: Device) -> tuple[str, ...]:
  if not is_auto(workload.fixed_remat):
    return (workload.fixed_remat,)
  return tuple(r for r in REMAT_ORDER if device.offload or r not in OFFLOAD)


def micro_batch_choices(workload: Workload, mesh: MeshShape) -> tuple[int, ...]:
  """Splits of the global batch (fewest first) whose micro-batches divide over the batch axes."""
  if not is_auto(workload.fixed_micro_batches):
    return (int(workload.fixed_micro_batches),)
  split = mesh["data"] * mesh["fsdp"] * mesh["expert"]
  B = workload.global_batch
  good = tuple(m for m in divisors(B) if (B // m) % split == 0)
  return good or (1,)


def vocab_chunks(workload: Workload) -> tuple[int, ...]:
  """The configured chunk, then halvings down to MIN_VOCAB_CHUNK (largest first: fewer, bigger
  matmuls)."""
  chunk = min(workload.loss_vocab_chunk, workload.model.vocab_size)
  out = [chunk]
  while out[-1] // 2 >= MIN_VOCAB_CHUNK:
    out.append(out[-1] // 2)
  return tuple(out)


LONG_ROW = 16384  # tokens per row from which the MLP / MoE may run in sequence chunks
FFN_CHUNKS = (8192, 4096)


def ffn_chunks(workload: Workload, always: bool = False) -> tuple[int, ...]:
  """The configured `model.ffn_chunk`, or for long rows also sequence chunks of the MLP / MoE
  (their intermediates and dispatch buffers then exist for one chunk of the row at a time, for
  one more forward pass of the FFN). `always`: offer the chunks at any length (fit hints)."""
  if workload.model.ffn_chunk:
    return (workload.model.ffn_chunk,)
  if workload.seq_len < LONG_ROW and not always:
    return (0,)
  return (0,) + tuple(c for c in FFN_CHUNKS if c < workload.seq_len and workload.seq_len % c == 0)


def settings(workload: Workload, mesh: MeshShape, device: Device):
  """Candidates of one mesh, fastest first within each remat policy."""
  for remat in remat_choices(workload, device):
    yield remat, [Candidate(mesh, remat, m, c, f) for m in micro_batch_choices(workload, mesh)
                  for f in ffn_chunks(workload) for c in vocab_chunks(workload)]


__all__ = ["FFN_CHUNKS", "LONG_ROW", "MIN_VOCAB_CHUNK", "REMAT_ORDER", "divisors", "ffn_chunks", "mesh_problems", "meshes", "micro_batch_choices",
           "remat_choices", "settings", "vocab_chunks"]
