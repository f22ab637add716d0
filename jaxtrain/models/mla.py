"""Multi-head latent attention (MLA, DeepSeek-V2/V3): queries through an optional low-rank
bottleneck, keys and values expanded per head from one normalised latent shared by all heads,
and a decoupled rotary part: every head's key carries the same `qk_rope_head_dim` rotated
dims, computed straight from the hidden state.

Per head, q/k have `qk_nope_head_dim + qk_rope_head_dim` dims and v has `v_head_dim`. The
softmax scale is (q/k head dim)^-0.5, times yarn's mscale(factor, mscale_all_dim)^2 when the
rotary schedule carries `mscale_all_dim` (the attention-scale correction that goes with yarn).
With `rope_interleave` the rotated dims come as pairs (x0, x1), (x2, x3), ...; they are
de-interleaved before the usual half-split rotation, which is exactly what Hugging Face's
interleaved variant computes.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.attention import attend
from jaxtrain.models.config import ModelConfig
from jaxtrain.models.layers import RMSNorm, cast, dtype_of, linear, param
from jaxtrain.models.rope import apply_rope, yarn_mscale
from jaxtrain.parallel.rules import constrain

# The latent RMSNorms use this epsilon whatever rms_norm_eps is (as DeepSeek and HF do).
LATENT_NORM_EPS = 1e-6


def softmax_scale(cfg: ModelConfig) -> float:
  scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
  rs = cfg.rope_scaling
  if rs.type != "none" and rs.mscale_all_dim:
    scale *= yarn_mscale(rs.factor, rs.mscale_all_dim) ** 2
  return scale


def deinterleave(x):
  """(x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...) on the last axis."""
  return jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def cache_shapes(cfg: ModelConfig, batch: int, max_len: int) -> tuple[tuple, tuple]:
  """Shapes of the (expanded) key and value caches."""
  H = cfg.num_heads
  return ((batch, max_len, H, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim), (batch, max_len, H, cfg.v_head_dim))


class MLAttention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, sliding_window: int, rngs: nnx.Rngs):
    E, H = cfg.hidden_size, cfg.num_heads
    Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    Rq, Rkv = cfg.q_lora_rank, cfg.kv_lora_rank
    pd, std = dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    self.sliding_window = sliding_window
    if Rq:
      self.q_a_proj = param(rngs, (E, Rq), ("embed", "lora"), std=std, dtype=pd)
      if cfg.attention_bias:
        self.q_a_bias = param(None, (Rq,), (None,), init="zeros", dtype=pd)
      self.q_a_norm = RMSNorm(Rq, eps=LATENT_NORM_EPS, axis_name=None, param_dtype=pd)
      self.q_b_proj = param(rngs, (Rq, H, Dn + Dr), ("lora", "heads", "head_dim"), std=std, dtype=pd)
    else:
      self.q_proj = param(rngs, (E, H, Dn + Dr), ("embed", "heads", "head_dim"), std=std, dtype=pd)
    self.kv_a_proj = param(rngs, (E, Rkv + Dr), ("embed", "lora"), std=std, dtype=pd)
    if cfg.attention_bias:
      self.kv_a_bias = param(None, (Rkv + Dr,), (None,), init="zeros", dtype=pd)
    self.kv_a_norm = RMSNorm(Rkv, eps=LATENT_NORM_EPS, axis_name=None, param_dtype=pd)
    self.kv_b_proj = param(rngs, (Rkv, H, Dn + Dv), ("lora", "heads", "head_dim"), std=std, dtype=pd)
    self.o_proj = param(rngs, (H, Dv, E), ("heads", "head_dim", "embed"), std=std, dtype=pd)
    if cfg.attention_out_bias:
      self.o_bias = param(None, (E,), ("embed",), init="zeros", dtype=pd)
    if cfg.attention_sinks:
      self.sinks = param(rngs, (H,), ("heads",), std=std, dtype=pd)

  def _queries(self, x):
    cfg, dtype = self.cfg, x.dtype
    if cfg.q_lora_rank:
      qa = linear(x, cast(self.q_a_proj[...], dtype), fp8=cfg.fp8_gemms)
      if cfg.attention_bias:
        qa = qa + cast(self.q_a_bias[...], dtype)
      return linear(self.q_a_norm(qa), cast(self.q_b_proj[...], dtype), fp8=cfg.fp8_gemms)
    return linear(x, cast(self.q_proj[...], dtype), fp8=cfg.fp8_gemms)

  def __call__(self, x, cos, sin, segment_ids, *, positions=None, cache=None):
    """As `Attention.__call__`; the cache holds expanded keys and values (`cache_shapes`)."""
    cfg, dtype = self.cfg, x.dtype
    B, T = x.shape[:2]
    H, Dn, Rkv = cfg.num_heads, cfg.qk_nope_head_dim, cfg.kv_lora_rank
    q = self._queries(x)
    q_nope, q_rot = q[..., :Dn], q[..., Dn:]
    ckv = linear(x, cast(self.kv_a_proj[...], dtype), fp8=cfg.fp8_gemms)
    if cfg.attention_bias:
      ckv = ckv + cast(self.kv_a_bias[...], dtype)
    latent, k_rot = ckv[..., :Rkv], ckv[..., Rkv:]
    kv = linear(self.kv_a_norm(latent), cast(self.kv_b_proj[...], dtype), fp8=cfg.fp8_gemms)
    k_nope, v = kv[..., :Dn], kv[..., Dn:]
    k_rot = k_rot[:, :, None, :]
    if cfg.rope_interleave:
      q_rot, k_rot = deinterleave(q_rot), deinterleave(k_rot)
    q = jnp.concatenate([q_nope, apply_rope(q_rot, cos, sin)], axis=-1)
    k_rot = apply_rope(k_rot, cos, sin)
    k = jnp.concatenate([k_nope, jnp.broadcast_to(k_rot, (B, T, H, k_rot.shape[-1]))], axis=-1)
    q = constrain(q, ("act_batch", "act_seq", "act_heads", None))
    k = constrain(k, ("act_batch", "act_seq", "act_heads", None))
    v = constrain(v, ("act_batch", "act_seq", "act_heads", None))
    sinks = self.sinks[...] if cfg.attention_sinks else None
    window = self.sliding_window or None
    scale = softmax_scale(cfg)
    out, new_cache = attend(q, k, v, segment_ids, positions, cache, sliding_window=window, sinks=sinks,
                            impl=cfg.attention_impl, scale=scale)
    out = constrain(out, ("act_batch", "act_seq", "act_heads", None))
    y = linear(out, cast(self.o_proj[...], dtype), contract=2, fp8=cfg.fp8_gemms)
    if cfg.attention_out_bias:
      y = y + cast(self.o_bias[...], dtype)
    return y, new_cache
