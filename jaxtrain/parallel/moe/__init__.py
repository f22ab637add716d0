"""Routed-expert computation. Token movement sits behind one interface (protocol.py:
prepare -> dispatch -> expert compute -> combine) with interchangeable implementations, and
select.py is the one place that picks one from config and platform:

  protocol.py  Routing, ExpertFFN (the expert compute), the Dispatcher protocol, StagedDispatcher
  local.py     LocalSorted (sort + grouped matmul), LocalBlocks (padded blocks, the CPU path)
  exchange.py  PaddedAllToAll, RaggedAllToAll (+ emulated_ragged_all_to_all), per device
  sharded.py   layout over the ambient mesh; ExpertParallel, the shard_map around an exchange
  select.py    exchange names and context, platform support, `select`
  capacity.py  capacity-limited mode (drops beyond capacity; SPMD einsums)
  routed.py    `routed_experts`, what models call; `dropless` (one device's view)

Dropless mode never drops a token copy; assignments marked invalid (padding tokens) are routed
nowhere and cost no expert FLOPs.
"""

from jaxtrain.parallel.moe.capacity import capacity
from jaxtrain.parallel.moe.exchange import PaddedAllToAll, RaggedAllToAll, emulated_ragged_all_to_all
from jaxtrain.parallel.moe.local import LocalBlocks, LocalSorted
from jaxtrain.parallel.moe.protocol import Dispatcher, ExpertFFN, ExpertLoRA, Routing, StagedDispatcher
from jaxtrain.parallel.moe.routed import dropless, routed_experts
from jaxtrain.parallel.moe.select import EXCHANGES, current_exchange, exchange_context, ragged_supported, select
from jaxtrain.parallel.moe.sharded import ExpertParallel, Layout, layout

__all__ = [
    "EXCHANGES", "Dispatcher", "ExpertFFN", "ExpertLoRA", "ExpertParallel", "Layout", "LocalBlocks", "LocalSorted",
    "PaddedAllToAll", "RaggedAllToAll", "Routing", "StagedDispatcher", "capacity", "current_exchange", "dropless",
    "emulated_ragged_all_to_all", "exchange_context", "layout", "ragged_supported", "routed_experts", "select",
]
