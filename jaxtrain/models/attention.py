"""Grouped-query self-attention with optional q/k RMSNorm, biases, sliding window, softmax
sinks and a KV cache for decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain import kernels
from jaxtrain.models.adapters import delta
from jaxtrain.models.config import ModelConfig
from jaxtrain.models.layers import RMSNorm, cast, dtype_of, linear, param
from jaxtrain.models.rope import apply_rope
from jaxtrain.parallel import sequence
from jaxtrain.parallel.rules import constrain


def attend(q, k, v, segment_ids, positions, cache, *, sliding_window, sinks, impl, scale=None):
  """Causal attention of `q` over `k`/`v`. Training (`cache` None): the sequence-parallel aware
  path with the configured kernel. Decoding: writes the new keys/values into the cache at
  `cache["index"]` and attends over everything written so far (reference kernel: T is tiny).
  Cache slots before a row's `cache["start"]` are left padding and never attended to; the
  causal and sliding-window masks compare cache slots, which differ by exactly the distance
  between the rows' true positions (`positions`, used by RoPE only). Query rows with segment id
  0 (padding) attend to nothing. Returns `(out [B, T, H, Dv], new_cache)`."""
  if cache is None:
    out = sequence.attention(q, k, v, q_segment_ids=segment_ids, causal=True, sliding_window=sliding_window,
                             sinks=sinks, scale=scale, impl=impl)
    return out, None
  del positions  # the mask works in cache slots
  index, start = cache["index"], cache["start"]
  k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
  v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
  B, T = q.shape[:2]
  S = k_all.shape[1]
  kv_slots = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  q_slots = jnp.broadcast_to(index + jnp.arange(T, dtype=jnp.int32), (B, T))
  kv_valid = (kv_slots < index + T) & (kv_slots >= start[:, None])
  out = kernels.attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                          q_segment_ids=(segment_ids != 0).astype(jnp.int32), kv_segment_ids=kv_valid.astype(jnp.int32),
                          q_positions=q_slots, kv_positions=kv_slots, causal=True, sliding_window=sliding_window,
                          sinks=sinks, scale=scale, impl="xla")
  return out, {"k": k_all, "v": v_all}


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, sliding_window: int, rngs: nnx.Rngs):
    E, H, KVH, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    pd, std = dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    self.sliding_window = sliding_window
    self.q_proj = param(rngs, (E, H, D), ("embed", "heads", "head_dim"), std=std, dtype=pd)
    self.k_proj = param(rngs, (E, KVH, D), ("embed", "kv_heads", "head_dim"), std=std, dtype=pd)
    self.v_proj = param(rngs, (E, KVH, D), ("embed", "kv_heads", "head_dim"), std=std, dtype=pd)
    self.o_proj = param(rngs, (H, D, E), ("heads", "head_dim", "embed"), std=std, dtype=pd)
    if cfg.attention_bias:
      self.q_bias = param(None, (H, D), ("heads", "head_dim"), init="zeros", dtype=pd)
      self.k_bias = param(None, (KVH, D), ("kv_heads", "head_dim"), init="zeros", dtype=pd)
      self.v_bias = param(None, (KVH, D), ("kv_heads", "head_dim"), init="zeros", dtype=pd)
    if cfg.attention_out_bias:
      self.o_bias = param(None, (E,), ("embed",), init="zeros", dtype=pd)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(D, eps=cfg.rms_norm_eps, axis_name="head_dim", param_dtype=pd)
      self.k_norm = RMSNorm(D, eps=cfg.rms_norm_eps, axis_name="head_dim", param_dtype=pd)
    if cfg.attention_sinks:
      self.sinks = param(rngs, (H,), ("heads",), std=std, dtype=pd)

  def _project(self, x, name):
    dtype = x.dtype
    y = linear(x, cast(getattr(self, f"{name}_proj")[...], dtype), fp8=self.cfg.fp8_gemms) + delta(self, f"{name}_proj", x)
    if self.cfg.attention_bias:
      y = y + cast(getattr(self, f"{name}_bias")[...], dtype)
    return y

  def __call__(self, x, cos, sin, segment_ids, *, positions=None, cache=None):
    """x `[B, T, E]`. With `cache` (dict k, v `[B, S, KVH, D]`, `index` scalar), the new keys
    and values are written at `index` and attention runs over the cache; returns the
    updated cache too."""
    cfg = self.cfg
    q, k, v = self._project(x, "q"), self._project(x, "k"), self._project(x, "v")
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = constrain(q, ("act_batch", "act_seq", "act_heads", None))
    k = constrain(k, ("act_batch", "act_seq", "act_kv_heads", None))
    v = constrain(v, ("act_batch", "act_seq", "act_kv_heads", None))
    sinks = self.sinks[...] if cfg.attention_sinks else None
    window = self.sliding_window or None
    out, new_cache = attend(q, k, v, segment_ids, positions, cache, sliding_window=window, sinks=sinks,
                            impl=cfg.attention_impl)
    out = constrain(out, ("act_batch", "act_seq", "act_heads", None))
    y = linear(out, cast(self.o_proj[...], x.dtype), contract=2, fp8=cfg.fp8_gemms) + delta(self, "o_proj", out)
    if cfg.attention_out_bias:
      y = y + cast(self.o_bias[...], x.dtype)
    return y, new_cache
