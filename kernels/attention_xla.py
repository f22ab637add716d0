"""The pure-JAX ("xla") attention reference, and the mask and default arguments every
attention implementation shares. The contract is in kernels/attention.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASKED = -1e30  # finite, so fully masked rows never create NaNs in the backward pass


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, *, causal, sliding_window):
  """Boolean `[B, T, S]` mask of allowed (query, key) pairs."""
  mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids[:, :, None] != 0)
  if causal:
    mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
  if sliding_window:
    mask &= q_positions[:, :, None] - kv_positions[:, None, :] < sliding_window
  return mask


def fill_defaults(q, k, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
  """Explicit segment ids and positions for calls that leave them out (one document per row,
  positions 0..T-1; with S != T the keys are a cache whose positions are 0..S-1)."""
  B, T = q.shape[:2]
  S = k.shape[1]
  if q_segment_ids is None:
    q_segment_ids = jnp.ones((B, T), jnp.int32)
  if kv_segment_ids is None:
    kv_segment_ids = q_segment_ids if S == T else jnp.ones((B, S), jnp.int32)
  if q_positions is None:
    q_positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  if kv_positions is None:
    kv_positions = q_positions if S == T else jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  return q_segment_ids, kv_segment_ids, q_positions, kv_positions


def attention_reference(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None,
                        kv_positions=None, causal=True, sliding_window=None, sinks=None, scale=None):
  """Plain XLA attention: softmax in fp32, heads-major layout, K/V shared across each query
  group by reshaping the queries rather than repeating K/V."""
  B, T, H, D = q.shape
  KVH = k.shape[2]
  G = H // KVH
  scale = D ** -0.5 if scale is None else scale
  q_seg, kv_seg, q_pos, kv_pos = fill_defaults(q, k, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  mask = attention_mask(q_seg, kv_seg, q_pos, kv_pos, causal=causal, sliding_window=sliding_window)

  qg = q.reshape(B, T, KVH, G, D)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask[:, None, None], logits, MASKED)
  if sinks is not None:
    sink = sinks.astype(jnp.float32).reshape(1, KVH, G, 1, 1)
    row_max = jnp.maximum(jnp.max(logits, axis=-1, keepdims=True), sink)
    unnorm = jnp.exp(logits - row_max)
    denom = jnp.sum(unnorm, axis=-1, keepdims=True) + jnp.exp(sink - row_max)
    probs = unnorm / denom
  else:
    probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  any_valid = jnp.any(mask, axis=-1)  # [B, T]
  out = jnp.where(any_valid[:, :, None, None, None], out, 0.0)
  return out.reshape(B, T, H, v.shape[-1]).astype(q.dtype)
