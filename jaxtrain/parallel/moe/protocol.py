"""The MoE token-movement interface: prepare -> dispatch -> expert compute -> combine.

A dispatcher takes tokens `x [N, E]` and the router's top-k choice, runs every valid token copy
(token n, choice k) through its expert, and returns sum_k w_k * expert_k(x_n). Staged
dispatchers split that into the four stages below, so an exchange between devices only has to
say how rows travel (`dispatch`) and come back (`combine`); the expert compute (`ExpertFFN`) and
the sort by expert (`StagedDispatcher.prepare`) are shared. Which implementation runs is
decided in one place, `select.select`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxtrain import kernels
from jaxtrain.parallel import collectives as col


@dataclasses.dataclass(frozen=True)
class Routing:
  """The router's choice for N tokens: expert ids and weights `[N, K]`, valid `[N]` (invalid
  tokens are padding: routed nowhere, no expert FLOPs, no load)."""
  expert_ids: jax.Array
  weights: jax.Array
  valid: jax.Array


def gated(h, act, glu):
  """h `[..., 2, I]` (gate, up) -> `[..., I]`."""
  gate, up = h[..., 0, :], h[..., 1, :]
  return act(gate) * up if glu is None else glu(gate, up)


@dataclasses.dataclass(frozen=True)
class ExpertLoRA:
  """One low-rank adapter per expert, applied inside the grouped matmuls over the same group
  sizes as the base weights (x @ A_e @ B_e for every row of expert e, no per-expert loop):
  gate_up += scale * gate_up_a @ gate_up_b with gate_up_a `[X, E, r]`, gate_up_b
  `[X, r, 2, I]` (one adapter over the fused gate/up output, as PEFT's `target_parameters`
  adapts transformers' fused expert weights); down += scale * down_a @ down_b with down_a
  `[X, I, r]`, down_b `[X, r, E]`."""
  gate_up_a: jax.Array
  gate_up_b: jax.Array
  down_a: jax.Array
  down_b: jax.Array
  scale: float

  def arrays(self) -> tuple:
    return self.gate_up_a, self.gate_up_b, self.down_a, self.down_b

  def with_arrays(self, *arrays) -> "ExpertLoRA":
    return ExpertLoRA(*arrays, scale=self.scale)


@dataclasses.dataclass(frozen=True)
class ExpertFFN:
  """The expert-compute stage: gate/up grouped matmul -> gated unit -> down grouped matmul, on
  rows grouped contiguously by expert. gate_up `[X, E, 2, I]`, down `[X, I, E]`, optional
  gate_up_bias `[X, 2, I]`; `glu(gate, up)` replaces `act(gate) * up` (GPT-OSS). `checked`:
  running inside a shard_map with check_vma, where rows and weights must share varying axes."""
  gate_up: jax.Array
  down: jax.Array
  act: Callable
  impl: str  # grouped-matmul implementation (`jaxtrain.kernels.gmm`)
  gate_up_bias: jax.Array | None = None
  glu: Callable | None = None
  checked: bool = False
  lora: ExpertLoRA | None = None
  fp8: str | None = None  # FP8 GEMMs through this `kernels.fp8` implementation (None: compute dtype)

  @property
  def num_experts(self) -> int:
    return self.gate_up.shape[0]

  def unit(self) -> Callable:
    """The gated unit as one function of (gate, up)."""
    return self.glu or (lambda gate, up: self.act(gate) * up)

  def __call__(self, rows, group_sizes):
    lora = self.lora.arrays() if self.lora is not None else ()
    rows, gate_up, down, bias, *lora = col.match_varying(rows, self.gate_up, self.down, self.gate_up_bias, *lora,
                                                         checked=self.checked)
    X, E, _, I = gate_up.shape
    gmm = lambda lhs, rhs: self._gmm(lhs, rhs, group_sizes)  # noqa: E731
    h = gmm(rows, gate_up.reshape(X, E, 2 * I))
    if lora:
      gu_a, gu_b, dn_a, dn_b = lora
      h = h + self.lora.scale * gmm(gmm(rows, gu_a), gu_b.reshape(X, -1, 2 * I))
    h = h.reshape(-1, 2, I)
    if bias is not None:
      row_expert = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(h.shape[0]), side="right")
      h = h + jnp.take(bias, jnp.minimum(row_expert, X - 1), axis=0).astype(h.dtype)
    a = gated(h, self.act, self.glu)
    y = gmm(a, down)
    if lora:
      y = y + self.lora.scale * gmm(gmm(a, dn_a), dn_b)
    return y

  def _gmm(self, rows, w, group_sizes):
    if self.fp8 is None:
      return kernels.gmm(rows, w, group_sizes, impl=self.impl)
    return kernels.fp8.gmm(rows, w, group_sizes, gmm_impl=self.impl, impl=self.fp8)


class Dispatcher(Protocol):
  """Any MoE token-movement implementation."""

  def __call__(self, x, routing: Routing, experts: ExpertFFN) -> tuple[jax.Array, jax.Array]:
    """x `[N, E]` -> (out `[N, E]`, valid token copies per expert `[X]`)."""
    ...


def sort_by_expert(flat_ids, num_experts):
  """Stable order of assignments by expert id (invalid id == num_experts sorts last)."""
  order = jnp.argsort(flat_ids, stable=True)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat_ids].add(1, mode="drop")
  return order, counts


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Token copies in expert order: where every staged dispatcher starts."""
  rows: jax.Array  # [N*K, E] token copies sorted by expert (invalid copies last)
  order: jax.Array  # [N*K] the assignment (n * K + k) behind each sorted row
  flat_ids: jax.Array  # [N*K] expert of each assignment (num_experts when invalid)
  counts: jax.Array  # [num_experts] valid copies per expert
  weights: jax.Array  # [N, K] routing weights, applied by the combine


@dataclasses.dataclass(frozen=True)
class Dispatched:
  """What the expert compute runs on: rows grouped by local expert, and the group sizes."""
  rows: jax.Array
  group_sizes: jax.Array
  state: Any = None  # whatever the implementation's combine needs for the trip back


def weighted_unsort(y_sorted, prepared: Prepared):
  """Expert outputs in `prepared`'s sorted order -> out `[N, E]` = sum_k w_k * y[n, k]."""
  N, K = prepared.weights.shape
  y = jnp.zeros_like(y_sorted).at[prepared.order].set(y_sorted, unique_indices=True)
  return jnp.einsum("nke,nk->ne", y.reshape(N, K, -1), prepared.weights.astype(y.dtype))


class StagedDispatcher:
  """A dispatcher as prepare -> dispatch -> expert compute -> combine. Subclasses define
  `dispatch`, `combine` and `peers`, how many devices share the experts (the routing's expert
  ids count all of them, `experts` holds this device's)."""
  peers: int

  def prepare(self, x, routing: Routing, num_experts: int) -> Prepared:
    """Copies of the tokens sorted by expert over all `num_experts` (every device's)."""
    K = routing.expert_ids.shape[1]
    flat = jnp.where(routing.valid[:, None], routing.expert_ids, num_experts).reshape(-1)
    order, counts = sort_by_expert(flat, num_experts)
    return Prepared(rows=jnp.take(x, order // K, axis=0), order=order, flat_ids=flat, counts=counts,
                    weights=routing.weights)

  def dispatch(self, prepared: Prepared) -> Dispatched:
    """Moves the sorted copies to the rows their (local) experts' grouped matmul reads."""
    raise NotImplementedError

  def combine(self, y, prepared: Prepared, dispatched: Dispatched) -> jax.Array:
    """Brings expert outputs `y` (rows of `dispatched`) back -> out `[N, E]`, router-weighted."""
    raise NotImplementedError

  def __call__(self, x, routing: Routing, experts: ExpertFFN):
    prepared = self.prepare(x, routing, experts.num_experts * self.peers)
    dispatched = self.dispatch(prepared)
    y = experts(dispatched.rows, dispatched.group_sizes)
    return self.combine(y, prepared, dispatched), prepared.counts
