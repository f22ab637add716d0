"""Attention over `[batch, time, heads, head_dim]` arrays: the pure-JAX reference and the
dispatching entry point.

Contract shared by every implementation:
- q `[B, T, H, D]`, k `[B, S, KVH, D]`, v `[B, S, KVH, Dv]`; H is a multiple of KVH (GQA/MQA
  without repeating K/V).
- A query attends to a key when both carry the same non-zero segment id, the key's position
  is not after the query's (causal), and, with a sliding window w, q_pos - kv_pos < w.
- Rows that may attend to nothing (padding, segment 0) produce zeros.
- `sinks` `[H]`: a learned per-head logit that joins the softmax denominator only.

Implementations (`impl`):
- "xla": `attention_reference` below; always available, O(T * S) memory.
- "pallas": `flash_attention.flash_attention`, blockwise with O(T) memory; compiled on GPU
  (Triton backend), interpret mode anywhere (`pallas_backend.interpret_mode()` or
  JAXTRAIN_PALLAS_INTERPRET=1), else the reference. Calls with explicit positions or S != T
  (decoding) use the reference.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` on CUDA GPUs; features it
  lacks (sinks, explicit positions, fp32, ...) use the reference.
- "chunked": `attention_chunked.chunked_attention`, the same blockwise algorithm in pure JAX
  (lax.scan, custom VJP): O(T) memory on every backend, and faster than the reference on CPU
  from T=512 on; calls that fit in one block are the reference.
- "auto": "pallas" on GPU (covers every feature with O(T) memory; pending measured numbers from
  experiments/bench_kernels.py), "chunked" everywhere else (CPU, TPU, NPU plugins).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain.kernels import dispatch
from jaxtrain.kernels.attention_chunked import chunked_attention
from jaxtrain.kernels.cudnn_attention import cudnn_attention
from jaxtrain.kernels.flash_attention import flash_attention

_MASKED = -1e30  # finite, so fully masked rows never create NaNs in the backward pass


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, *, causal, sliding_window):
  """Boolean `[B, T, S]` mask of allowed (query, key) pairs."""
  mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (q_segment_ids[:, :, None] != 0)
  if causal:
    mask &= kv_positions[:, None, :] <= q_positions[:, :, None]
  if sliding_window:
    mask &= q_positions[:, :, None] - kv_positions[:, None, :] < sliding_window
  return mask


def _defaults(q, k, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
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
  q_seg, kv_seg, q_pos, kv_pos = _defaults(q, k, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  mask = attention_mask(q_seg, kv_seg, q_pos, kv_pos, causal=causal, sliding_window=sliding_window)

  qg = q.reshape(B, T, KVH, G, D)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask[:, None, None], logits, _MASKED)
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


dispatch.register("attention", "xla", attention_reference, reference=True)
dispatch.register("attention", "pallas", flash_attention)
dispatch.register("attention", "cudnn", cudnn_attention)
dispatch.register("attention", "chunked", chunked_attention)
dispatch.set_auto("attention", "gpu", "pallas")
dispatch.set_auto("attention", "*", "chunked")


def attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
              causal=True, sliding_window=None, sinks=None, scale=None, impl="auto"):
  """Attention through the implementation named by `impl` (see `dispatch`)."""
  _, fn = dispatch.resolve("attention", impl)
  return fn(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
            kv_positions=kv_positions, causal=causal, sliding_window=sliding_window, sinks=sinks, scale=scale)
