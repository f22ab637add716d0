"""Dispatchers for experts that all live on this device (no token exchange)."""

from __future__ import annotations

import dataclasses

from jaxtrain.kernels.moe_blocked import blocked_expert_ffn
from jaxtrain.parallel.moe.protocol import Dispatched, ExpertFFN, Prepared, Routing, StagedDispatcher, weighted_unsort


@dataclasses.dataclass(frozen=True)
class LocalSorted(StagedDispatcher):
  """Sort copies by expert, one grouped matmul per projection, un-sort: copies sorted by
  expert are already grouped, so dispatch and combine move nothing. Also the per-device body
  under a mesh whose experts are not split (tokens split, every device holds all experts)."""
  peers = 1  # a class constant, not a field

  def dispatch(self, prepared: Prepared) -> Dispatched:
    return Dispatched(prepared.rows, prepared.counts)

  def combine(self, y, prepared: Prepared, dispatched: Dispatched):
    return weighted_unsort(y, prepared)


@dataclasses.dataclass(frozen=True)
class LocalBlocks:
  """Copies go straight into per-expert row blocks padded to the block size and back
  (`kernels.moe_blocked`): the CPU path. Its custom VJP spans all four stages, turning every
  backward data movement into a gather (no scatter-add), so it is one call, not staged."""

  def __call__(self, x, routing: Routing, experts: ExpertFFN):
    lora = experts.lora
    return blocked_expert_ffn(x, routing.expert_ids, routing.weights, routing.valid, experts.gate_up, experts.down,
                              gate_up_bias=experts.gate_up_bias, glu=experts.unit(),
                              lora=None if lora is None else lora.arrays(), lora_scale=lora.scale if lora else 1.0)
