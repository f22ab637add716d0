"""The entry point models call: `routed_experts` (dropless or capacity), and `dropless` on
this device's view alone (tests and benchmarks)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from jaxtrain.parallel.moe.capacity import capacity
from jaxtrain.parallel.moe.protocol import ExpertFFN, ExpertLoRA, Routing
from jaxtrain.parallel.moe.select import current_exchange, select
from jaxtrain.parallel.moe.sharded import layout


def _down_bias_term(expert_ids, weights, valid, down_bias):
  """sum_k w_k * down_bias[e_k] per token `[N, E]` (zero for invalid tokens)."""
  b = jnp.take(down_bias, expert_ids, axis=0)  # [N, K, E]
  w = jnp.where(valid[:, None], weights, 0).astype(b.dtype)
  return jnp.einsum("nke,nk->ne", b, w)


def routed_experts(x, expert_ids, weights, valid, gate_up, down, *, act, mode, capacity_factor, impl,
                   exchange: str | None = None, gate_up_bias=None, down_bias=None, glu: Callable | None = None,
                   lora: ExpertLoRA | None = None, fp8: str | None = None):
  """x `[N, E]` tokens, expert_ids/weights `[N, K]`, valid `[N]` bool; gate_up `[X, E, 2, I]`,
  down `[X, I, E]`, optional gate_up_bias `[X, 2, I]`, down_bias `[X, E]`, and gated unit
  `glu(gate, up)` (default `act(gate) * up`).

  Returns (out `[N, E]`, tokens per expert `[X]` (valid assignments, before any drop), dropped
  assignment count). mode "dropless" never drops: the dispatcher `select` picks for `exchange`
  (default: the one `mesh_context(..., expert_exchange=...)` set), `impl` and the ambient mesh
  moves the tokens. mode "capacity": see capacity.py. `down_bias` enters the combine as
  sum_k w_k * down_bias[e_k], so a tensor-split hidden dimension never adds it twice. `lora`:
  per-expert adapters computed inside the expert matmuls (protocol.ExpertLoRA). `fp8`: the
  `kernels.fp8` implementation of FP8 expert GEMMs (dropless only), None for compute-dtype GEMMs."""
  if mode == "capacity":
    if fp8 is not None:
      raise ValueError("FP8 expert GEMMs need mode 'dropless'")
    return capacity(x, expert_ids, weights, valid, gate_up, down, act=act, capacity_factor=capacity_factor,
                    gate_up_bias=gate_up_bias, down_bias=down_bias, glu=glu, lora=lora)
  if mode != "dropless":
    raise ValueError(f"unknown MoE mode {mode!r}")
  exchange = current_exchange() if exchange is None else exchange
  dispatcher = select(exchange, impl, layout(x.shape[0], x.shape[1], gate_up.shape, down.shape, exchange),
                      fp8=fp8 is not None)
  out, load = dispatcher(x, Routing(expert_ids, weights, valid),
                         ExpertFFN(gate_up, down, act, impl, gate_up_bias=gate_up_bias, glu=glu, lora=lora,
                                   fp8=fp8))
  if down_bias is not None:
    out = out + _down_bias_term(expert_ids, weights, valid, down_bias).astype(out.dtype)
  return out, load, jnp.zeros((), jnp.int32)


def dropless(x, expert_ids, weights, valid, gate_up, down, *, act, impl, gate_up_bias=None, glu=None, lora=None):
  """Dropless routed experts ignoring any mesh: the local dispatcher for `impl`. Returns
  (out, tokens per expert, 0) like `routed_experts`."""
  dispatcher = select("auto", impl, None)
  out, load = dispatcher(x, Routing(expert_ids, weights, valid),
                         ExpertFFN(gate_up, down, act, impl, gate_up_bias=gate_up_bias, glu=glu, lora=lora))
  return out, load, jnp.zeros((), jnp.int32)
