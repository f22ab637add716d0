"""Capacity-limited MoE: each expert takes at most C = ceil(capacity_factor * assignments /
experts) token copies in token order; the rest are dropped (and counted). Plain einsums over
[experts, C, hidden] buffers that the SPMD partitioner shards (same numbers as one device)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxtrain.parallel.moe.protocol import gated, sort_by_expert


def capacity_slots(flat_ids, num_experts, capacity):
  """Slot of each assignment in an [experts * capacity] buffer (token order decides who fits);
  dropped and invalid assignments get slot experts * capacity (out of range)."""
  order, counts = sort_by_expert(flat_ids, num_experts)
  starts = jnp.cumsum(counts) - counts
  sorted_ids = flat_ids[order]
  rank_sorted = jnp.arange(flat_ids.shape[0]) - jnp.take(starts, jnp.minimum(sorted_ids, num_experts - 1))
  rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted, unique_indices=True)
  keep = (flat_ids < num_experts) & (rank < capacity)
  return jnp.where(keep, flat_ids * capacity + rank, num_experts * capacity), keep, counts


def capacity(x, expert_ids, weights, valid, gate_up, down, *, act, capacity_factor, gate_up_bias=None,
             down_bias=None, glu=None, lora=None):
  """Returns (out `[N, E]`, tokens per expert `[X]` before any drop, dropped assignments)."""
  N, K = expert_ids.shape
  X, E = gate_up.shape[:2]
  C = max(1, math.ceil(capacity_factor * N * K / X))
  flat = jnp.where(valid[:, None], expert_ids, X).reshape(-1)
  slot, keep, counts = capacity_slots(flat, X, C)
  tokens = jnp.repeat(x, K, axis=0)
  buf = jnp.zeros((X * C, E), x.dtype).at[slot].set(tokens, mode="drop").reshape(X, C, E)
  h = jnp.einsum("xce,xefi->xcfi", buf, gate_up)
  if lora is not None:  # per-expert adapters (protocol.ExpertLoRA)
    h = h + lora.scale * jnp.einsum("xcr,xrfi->xcfi", jnp.einsum("xce,xer->xcr", buf, lora.gate_up_a), lora.gate_up_b)
  if gate_up_bias is not None:
    h = h + gate_up_bias[:, None].astype(h.dtype)
  a = gated(h, act, glu)
  y_buf = jnp.einsum("xci,xie->xce", a, down)
  if lora is not None:
    y_buf = y_buf + lora.scale * jnp.einsum("xcr,xre->xce", jnp.einsum("xci,xir->xcr", a, lora.down_a), lora.down_b)
  if down_bias is not None:  # dropped assignments get nothing, bias included
    y_buf = y_buf + down_bias[:, None].astype(y_buf.dtype)
  y_buf = y_buf.reshape(X * C, E)
  y = jnp.take(y_buf, slot, axis=0, mode="fill", fill_value=0)
  out = jnp.einsum("nke,nk->ne", y.reshape(N, K, E), weights.astype(y.dtype))
  dropped = jnp.sum(flat < X) - jnp.sum(keep)
  return out, counts, dropped.astype(jnp.int32)
