"""Estimated step time of a candidate: compute from the FLOPs model (train/flops.py, plus what
the remat policy recomputes) at the device's achievable fraction of its peak, and
communication from the bytes each collective moves per step over the bandwidth of the link it
crosses (inside a node or between nodes).

Mesh axes are laid out ('data', 'fsdp', 'expert', 'sequence', 'tensor') with the last one
fastest-varying (jax.make_mesh), so an axis stays inside a node when it and every axis after it
fit in one node. Collectives:

- fsdp (ZeRO-3): every micro-batch all-gathers each layer's weights in the forward pass and
  again in the backward pass, and reduce-scatters their fp32 gradients;
- data: one all-reduce of the gradients per step;
- expert: the token exchange, there and back, forward and backward, per MoE layer and
  micro-batch (the ragged exchange moves real rows; the padded one its worst-case buffers);
- tensor: two all-reduces of the activations per layer, forward and backward;
- sequence (Ulysses): all-to-alls of q, k, v and the attention output per layer, both ways;
- offloaded activations go to host memory and come back once per step.

XLA overlaps the weight gathers, gradient scatters and host transfers with compute (they do not
depend on the layer being computed); the token exchanges and activation all-reduces sit on the
critical path. So: step = max(compute, overlapped communication) + exposed communication.
"""

from __future__ import annotations

import dataclasses
import math

from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel.mesh import AXES
from jaxtrain.plan.hardware import COLLECTIVE_EFFICIENCY, Device
from jaxtrain.plan.state import compute_itemsize
from jaxtrain.plan.workload import Candidate, Workload
from jaxtrain.train import flops as flops_lib


@dataclasses.dataclass(frozen=True)
class StepTime:
  compute: float  # seconds of compute per device per step (recomputation included)
  overlapped: dict  # collective -> seconds that can hide under compute
  exposed: dict  # collective -> seconds on the critical path
  flops_per_device: float  # per step, recomputation included
  model_flops_per_token: float  # without recomputation (MFU's numerator)
  tokens_per_step: int
  devices: int

  @property
  def step(self) -> float:
    return max(self.compute, sum(self.overlapped.values())) + sum(self.exposed.values())

  @property
  def tokens_per_sec(self) -> float:
    return self.tokens_per_step / self.step

  @property
  def tokens_per_sec_per_device(self) -> float:
    return self.tokens_per_sec / self.devices

  def mfu(self, peak: float | None) -> float | None:
    if not peak:
      return None
    return self.model_flops_per_token * self.tokens_per_sec / (peak * self.devices)

  def bottleneck(self) -> str:
    comm = sum(self.overlapped.values())
    worst = max([*self.overlapped.items(), *self.exposed.items()], key=lambda kv: kv[1], default=("", 0.0))
    if self.compute >= comm and self.compute >= sum(self.exposed.values()):
      return "compute"
    return worst[0]


def _recompute_fraction(remat: str) -> dict[str, float]:
  """Which parts of the layers' forward pass the backward recomputes (fractions of their forward)."""
  if remat in ("full", "offload_input"):
    return {"matmul": 1.0, "attention": 1.0}
  if remat in ("save_dots", "offload_dots"):
    return {"matmul": 0.0, "attention": 1.0}  # attention's q.k / p.v have batch dims: recomputed
  if remat == "save_attention_out":
    return {"matmul": 0.85, "attention": 0.0}  # all but the attention block's output
  return {"matmul": 0.0, "attention": 0.0}


def _ffn_params_per_token(cfg: ModelConfig) -> float:
  """Weights of the MLP / MoE layers one token multiplies with (routed experts: its top-k)."""
  E, total = cfg.hidden_size, 0.0
  for i in range(cfg.num_layers):
    if cfg.is_moe_layer(i):
      total += 3 * E * (cfg.num_experts_per_tok * cfg.moe_intermediate_size + cfg.shared_expert_intermediate_size)
    else:
      total += 3 * E * cfg.intermediate_size
  return total


COLLECTIVE_LATENCY = {"intra": 10e-6, "inter": 30e-6}  # seconds per collective call (NCCL-like)
KERNEL_LAUNCH = 3e-6  # seconds per kernel launch on an accelerator
KERNELS_PER_LAYER = 60  # launches per layer per micro-batch, forward and backward (fused kernels)


def _crosses_nodes(mesh: dict[str, int], axis: str, device: Device) -> bool:
  return math.prod(mesh[a] for a in AXES[AXES.index(axis):]) > device.per_node


def _collective(mesh, axis: str, device: Device, volume: float, calls: int) -> float:
  """Seconds for `calls` collectives over `axis` moving `volume` bytes per device in all."""
  latency = COLLECTIVE_LATENCY["inter" if _crosses_nodes(mesh, axis, device) else "intra"]
  return volume / axis_bandwidth(mesh, axis, device) + calls * latency


def axis_bandwidth(mesh: dict[str, int], axis: str, device: Device) -> float:
  """Bytes/s per device for a collective over `axis`: inside a node when the axis and every
  faster-varying axis after it fit in one node."""
  bw = device.inter_bw if _crosses_nodes(mesh, axis, device) else device.intra_bw
  return bw * COLLECTIVE_EFFICIENCY


def step_time(workload: Workload, candidate: Candidate, device: Device, *, local_tokens: int, grads: int,
              gathered_per_pass: int, host: int = 0) -> StepTime:
  """`local_tokens`: tokens per device per micro-batch; `grads`: gradient bytes per device;
  `gathered_per_pass`: bytes of weights (param dtype) one device gathers over fsdp per forward
  pass; `host`: activation bytes offloaded per step."""
  cfg: ModelConfig = workload.model
  mesh = candidate.mesh.shape
  n = candidate.mesh.size
  T, B, M = workload.seq_len, workload.global_batch, candidate.micro_batches
  s = compute_itemsize(cfg)
  tokens = B * T

  # Compute: the model's FLOPs, plus what remat recomputes, split over the devices that do not
  # hold copies of the same rows.
  per_token = flops_lib.train_flops_per_token(cfg, T)
  attention = flops_lib.attention_flops_per_token(cfg, T)
  matmuls = 2.0 * flops_lib.matmul_params_per_token(cfg)["layers"]
  rec = _recompute_fraction(candidate.remat)
  total_per_token = per_token + rec["matmul"] * matmuls + rec["attention"] * attention
  if candidate.ffn_chunk and candidate.ffn_chunk < T:  # each chunk's FFN forward runs again in the backward
    total_per_token += 2.0 * _ffn_params_per_token(cfg)
  replicas = max(n // max(tokens // max(local_tokens * M, 1), 1), 1)
  flops_per_device = total_per_token * tokens * replicas / n
  peak = device.peak_flops(cfg.dtype) or 1e12
  compute = flops_per_device / (peak * device.achievable)
  if device.platform != "cpu":
    compute += M * cfg.num_layers * KERNELS_PER_LAYER * KERNEL_LAUNCH
  L = cfg.num_layers

  overlapped, exposed = {}, {}
  fsdp = mesh["fsdp"]
  if fsdp > 1 and gathered_per_pass:
    frac = (fsdp - 1) / fsdp
    gathers = 2 * M * gathered_per_pass * s / 4 * frac  # forward + backward all-gather, compute dtype
    scatter = M * gathered_per_pass * frac  # fp32 gradients
    overlapped["fsdp gather/scatter"] = _collective(mesh, "fsdp", device, gathers + scatter, 3 * M * L)
  if mesh["data"] > 1:
    d = mesh["data"]
    overlapped["data all-reduce"] = _collective(mesh, "data", device, 2 * grads * (d - 1) / d, L)
  E = cfg.hidden_size
  moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
  ep = mesh["expert"]
  if ep > 1 and moe_layers:
    K = cfg.num_experts_per_tok
    ragged = device.platform in ("gpu", "tpu") and workload.expert_exchange in ("auto", "ragged")
    rows = local_tokens * K if ragged else local_tokens * ep * min(K, max(cfg.num_experts // ep, 1))
    per_layer = 4 * rows * E * s * (ep - 1) / ep  # there and back, forward and backward
    exposed["expert all-to-all"] = _collective(mesh, "expert", device, M * moe_layers * per_layer, 4 * M * moe_layers)
  tp = mesh["tensor"]
  if tp > 1:
    per_layer = 4 * 2 * local_tokens * E * s * (tp - 1) / tp
    exposed["tensor all-reduce"] = _collective(mesh, "tensor", device, M * L * per_layer, 4 * M * L)
  sp = mesh["sequence"]
  if sp > 1:
    D = cfg.resolved_head_dim
    heads = cfg.num_heads // tp
    per_layer = 2 * local_tokens * (2 * heads + 2 * max(cfg.num_kv_heads // tp, 1)) * D * s * (sp - 1) / sp
    exposed["sequence all-to-all"] = _collective(mesh, "sequence", device, M * L * per_layer, 8 * M * L)
  if host:
    overlapped["host offload"] = 2 * host / device.host_bw
  return StepTime(compute=compute, overlapped=overlapped, exposed=exposed, flops_per_device=flops_per_device,
                  model_flops_per_token=per_token, tokens_per_step=tokens, devices=n)


__all__ = ["StepTime", "axis_bandwidth", "step_time"]
