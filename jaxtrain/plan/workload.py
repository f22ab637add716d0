"""What the planner plans for: the workload (model, sequence length, global batch, kernels,
optimizer, from the run config) and one candidate way to run it (mesh sizes, remat policy,
micro-batch split, loss vocabulary chunk)."""

from __future__ import annotations

import dataclasses
import math

from jaxtrain.kernels.dispatch import auto_choice
from jaxtrain.config import is_auto
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel.mesh import AXES
from jaxtrain.plan.state import MeshShape


@dataclasses.dataclass(frozen=True)
class Workload:
  model: ModelConfig  # remat is the candidate's, not this one's
  seq_len: int
  global_batch: int
  loss_vocab_chunk: int  # the config's value (a candidate may pick a smaller one)
  expert_exchange: str  # mesh.expert_exchange
  fixed_mesh: tuple[tuple[str, int | str], ...]  # mesh.* as configured: sizes, -1 or "auto"
  fixed_remat: str  # model.remat as configured (or "auto")
  fixed_micro_batches: int | str  # train.micro_batches as configured (or "auto")

  @classmethod
  def from_config(cls, config) -> "Workload":
    model = dict(config.model.to_dict())
    remat = model["remat"]
    model["remat"] = "none" if is_auto(remat) else remat
    cfg = ModelConfig.from_config(model, config.kernels)
    return cls(model=cfg, seq_len=int(config.data.seq_len), global_batch=int(config.train.global_batch),
               loss_vocab_chunk=int(config.train.loss_vocab_chunk), expert_exchange=config.mesh.expert_exchange,
               fixed_mesh=tuple((a, config.mesh[a]) for a in AXES), fixed_remat=remat,
               fixed_micro_batches=config.train.micro_batches)

  @property
  def tokens_per_step(self) -> int:
    return self.global_batch * self.seq_len


@dataclasses.dataclass(frozen=True)
class Candidate:
  mesh: MeshShape
  remat: str
  micro_batches: int
  vocab_chunk: int
  ffn_chunk: int = 0  # model.ffn_chunk: MLP / MoE over the sequence in chunks of this many tokens (0: whole rows)

  def describe(self) -> str:
    chunk = f", ffn_chunk {self.ffn_chunk}" if self.ffn_chunk else ""
    return (f"mesh {self.mesh.describe()}, remat {self.remat}, micro_batches {self.micro_batches}, "
            f"loss_vocab_chunk {self.vocab_chunk}{chunk}")


def candidate_from_config(config, workload: Workload | None = None) -> Candidate:
  """The candidate a fully specified config runs (every -1 resolved against the device count is
  the caller's job: pass a config whose mesh sizes are numbers)."""
  sizes = {a: int(config.mesh[a]) for a in AXES}
  return Candidate(MeshShape(sizes), config.model.remat, int(config.train.micro_batches),
                   min(int(config.train.loss_vocab_chunk), int(config.model.vocab_size)), int(config.model.ffn_chunk))


@dataclasses.dataclass(frozen=True)
class Local:
  """One device's share of a micro-batch and of the model's widths."""
  rows: int  # sequences per device per micro-batch
  seq: int  # tokens per sequence on this device (split by the sequence axis)
  model: ModelConfig  # the model at one device's widths (heads, MLP widths over tensor)
  batch_replicas: int  # how many devices hold the same rows (batch axes that do not divide it)

  @property
  def tokens(self) -> int:
    return self.rows * self.seq


# The kernels' "auto" for the planned platform; the device kind is "" (any row of the platform
# matches), since a plan is made for a platform's kind by name, not for a live device.
def attention_impl(workload: Workload, platform: str) -> str:
  impl = workload.model.attention_impl
  return auto_choice("attention", platform, "") if impl == "auto" else impl


def gmm_impl(workload: Workload, platform: str) -> str:
  impl = workload.model.gmm_impl
  return auto_choice("gmm", platform, "") if impl == "auto" else impl


def traced_model(workload: Workload, platform: str, remat: str) -> ModelConfig:
  """The model as the planner traces it on this host for `platform`: blockwise attention
  kernels (Pallas / cuDNN flash attention on GPU) keep the same residuals as the pure-JAX
  chunked one, which traces anywhere; on the CPU, activations are float32 whatever the compute
  dtype."""
  impl = attention_impl(workload, platform)
  model = workload.model.replace(remat=remat, attention_impl="xla" if impl == "xla" else "chunked",
                                 gmm_impl="blocked")
  if platform == "cpu":  # XLA:CPU computes bfloat16 / float16 in float32 (its float normalization)
    model = model.replace(dtype="float32")
  return model


def local_share(workload: Workload, candidate: Candidate, platform: str) -> Local:
  m, mesh = traced_model(workload, platform, candidate.remat), candidate.mesh
  micro = workload.global_batch // candidate.micro_batches
  batch_axes = [a for a in ("data", "fsdp", "expert") if mesh[a] > 1]
  split = 1
  for a in batch_axes:  # as parallel/rules.logical_to_spec keeps them: while they divide the rows
    if micro % (split * mesh[a]) == 0:
      split *= mesh[a]
  replicas = math.prod(mesh[a] for a in batch_axes) // split
  sp, tp = mesh["sequence"], mesh["tensor"]
  div = lambda n: max(n // tp, 1) if n else n  # noqa: E731
  # The model chunks the whole row; sequence parallel gives each device its share of a chunk.
  ffn_chunk = candidate.ffn_chunk // sp if candidate.ffn_chunk % sp == 0 else candidate.ffn_chunk
  local = m.replace(ffn_chunk=ffn_chunk, num_heads=div(m.num_heads), num_kv_heads=max(m.num_kv_heads // tp, 1),
                    intermediate_size=div(m.intermediate_size), moe_intermediate_size=div(m.moe_intermediate_size),
                    shared_expert_intermediate_size=div(m.shared_expert_intermediate_size))
  return Local(rows=micro // split, seq=max(workload.seq_len // sp, 1), model=local, batch_replicas=replicas)


__all__ = ["Candidate", "Local", "Workload", "attention_impl", "candidate_from_config", "gmm_impl", "local_share",
           "traced_model"]
