"""Routed-expert computation: token movement (dispatch -> expert FFN -> combine) behind one
entry point, `routed_experts`. Implementations:

- dropless: sort token copies by expert, grouped matmul (`jaxtrain.kernels.gmm`), un-sort and
  combine with the routing weights. No token is ever dropped.
- capacity: each expert takes at most C = ceil(capacity_factor * assignments / experts) token
  copies in token order; the rest are dropped (and counted).

Assignments marked invalid (padding tokens) are routed nowhere and cost no expert FLOPs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxtrain import kernels


def _expert_ffn_grouped(rows, group_sizes, gate_up, down, act, impl):
  """rows `[M, E]` grouped by expert; gate_up `[X, E, 2, I]`; down `[X, I, E]`."""
  X, E, _, I = gate_up.shape
  h = kernels.gmm(rows, gate_up.reshape(X, E, 2 * I), group_sizes, impl=impl).reshape(-1, 2, I)
  return kernels.gmm(act(h[:, 0]) * h[:, 1], down, group_sizes, impl=impl)


def _sort_by_expert(flat_ids, num_experts):
  """Stable order of assignments by expert id (invalid id == num_experts sorts last)."""
  order = jnp.argsort(flat_ids, stable=True)
  counts = jnp.zeros((num_experts,), jnp.int32).at[flat_ids].add(1, mode="drop")
  return order, counts


def dropless(x, expert_ids, weights, valid, gate_up, down, *, act, impl):
  N, K = expert_ids.shape
  X = gate_up.shape[0]
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
  order, counts = _sort_by_expert(flat, X)
  rows = jnp.take(x, order // K, axis=0)
  y_sorted = _expert_ffn_grouped(rows, counts, gate_up, down, act, impl)
  y = jnp.zeros_like(y_sorted).at[order].set(y_sorted, unique_indices=True)
  out = jnp.einsum("nke,nk->ne", y.reshape(N, K, -1), weights.astype(y.dtype))
  return out, counts, jnp.zeros((), jnp.int32)


def capacity_slots(flat_ids, num_experts, capacity):
  """Slot of each assignment in an [experts * capacity] buffer (token order decides who fits);
  dropped and invalid assignments get slot experts * capacity (out of range)."""
  order, counts = _sort_by_expert(flat_ids, num_experts)
  starts = jnp.cumsum(counts) - counts
  sorted_ids = flat_ids[order]
  rank_sorted = jnp.arange(flat_ids.shape[0]) - jnp.take(starts, jnp.minimum(sorted_ids, num_experts - 1))
  rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted, unique_indices=True)
  keep = (flat_ids < num_experts) & (rank < capacity)
  return jnp.where(keep, flat_ids * capacity + rank, num_experts * capacity), keep, counts


def capacity(x, expert_ids, weights, valid, gate_up, down, *, act, capacity_factor):
  N, K = expert_ids.shape
  X, E, _, I = gate_up.shape
  C = max(1, math.ceil(capacity_factor * N * K / X))
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
  slot, keep, counts = capacity_slots(flat, X, C)
  tokens = jnp.repeat(x, K, axis=0)
  buf = jnp.zeros((X * C, E), x.dtype).at[slot].set(tokens, mode="drop").reshape(X, C, E)
  h = jnp.einsum("xce,xefi->xcfi", buf, gate_up)
  y_buf = jnp.einsum("xci,xie->xce", act(h[:, :, 0]) * h[:, :, 1], down).reshape(X * C, E)
  y = jnp.take(y_buf, slot, axis=0, mode="fill", fill_value=0)
  out = jnp.einsum("nke,nk->ne", y.reshape(N, K, E), weights.astype(y.dtype))
  dropped = jnp.sum(flat < X) - jnp.sum(keep)
  return out, counts, dropped.astype(jnp.int32)


def routed_experts(x, expert_ids, weights, valid, gate_up, down, *, act, mode, capacity_factor, impl):
  """x `[N, E]` tokens, expert_ids/weights `[N, K]`, valid `[N]` bool.

  Returns (out `[N, E]`, tokens per expert `[X]` (valid assignments, before any drop),
  dropped assignment count)."""
  if mode == "dropless":
    return dropless(x, expert_ids, weights, valid, gate_up, down, act=act, impl=impl)
  if mode == "capacity":
    return capacity(x, expert_ids, weights, valid, gate_up, down, act=act, capacity_factor=capacity_factor)
  raise ValueError(f"unknown MoE mode {mode!r}")
