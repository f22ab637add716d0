"""The vision transformer with a class token (InternViT, InternVL's tower): square image tiles
cut into patches, a class token and learned absolute positions, layer-scaled pre-norm blocks
with full attention inside each tile, and the pixel-shuffle MLP projector. Inputs are the
per-row tiles of `layout.cls_vit_inputs`."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.layers import LayerNorm, RMSNorm, activation, cast, dtype_of, param
from jaxtrain.models.vision.common import Linear, flat_segments, image_attention, run_stacked, stacked
from jaxtrain.parallel.rules import constrain

ACT = ("act_vit_batch", "act_vit_seq", "act_vit_embed")


def norm(kind: str, dim: int, eps: float, pd):
  cls = LayerNorm if kind == "layer_norm" else RMSNorm
  return cls(dim, eps=eps, axis_name="vit_embed", param_dtype=pd)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    E, H = v.hidden_size, v.num_heads
    self.heads, self.act, self.attention_impl = H, v.activation, cfg.attention_impl
    self.norm_before = norm(v.norm, E, v.norm_eps, pd)
    self.q = Linear(rngs, E, E, ("vit_embed", "vit_heads"), bias=v.qkv_bias, std=std, dtype=pd)
    self.k = Linear(rngs, E, E, ("vit_embed", "vit_heads"), bias=v.qkv_bias, std=std, dtype=pd)
    self.v = Linear(rngs, E, E, ("vit_embed", "vit_heads"), bias=v.qkv_bias, std=std, dtype=pd)
    if v.qk_norm:  # over the whole width, before the split into heads
      self.q_norm = RMSNorm(E, eps=1e-6, axis_name="vit_heads", param_dtype=pd)
      self.k_norm = RMSNorm(E, eps=1e-6, axis_name="vit_heads", param_dtype=pd)
    self.qk_norm = v.qk_norm
    self.proj = Linear(rngs, E, E, ("vit_heads", "vit_embed"), std=std, dtype=pd)
    self.scale_attn = param(None, (E,), ("vit_embed",), init="ones", dtype=pd)
    self.norm_after = norm(v.norm, E, v.norm_eps, pd)
    self.fc1 = Linear(rngs, E, v.intermediate_size, ("vit_embed", "vit_mlp"), std=std, dtype=pd)
    self.fc2 = Linear(rngs, v.intermediate_size, E, ("vit_mlp", "vit_embed"), std=std, dtype=pd)
    self.scale_mlp = param(None, (E,), ("vit_embed",), init="ones", dtype=pd)

  def __call__(self, x, segments):
    n, P, E = x.shape
    h = self.norm_before(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    split = lambda t: t.reshape(n, P, self.heads, E // self.heads)  # noqa: E731
    out = image_attention(split(q), split(k), split(v), segments, self.attention_impl).reshape(n, P, E)
    x = x + cast(self.scale_attn[...], x.dtype) * self.proj(out)
    y = self.fc2(activation(self.act)(self.fc1(self.norm_after(x))))
    return constrain(x + cast(self.scale_mlp[...], x.dtype) * y, ACT)


class ClsViT(nnx.Module):
  """`__call__(vision_pixels [B, N, C, S, S])` -> (patch hidden states `[B * N, S/p, S/p, E]`
  without the class token, no taps)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    E, g = v.hidden_size, v.image_size // v.patch_size
    self.patch_embed = param(rngs, (v.in_channels, v.patch_size, v.patch_size, E), (None, None, None, "vit_embed"),
                             std=std, dtype=pd)
    self.patch_bias = param(None, (E,), ("vit_embed",), init="zeros", dtype=pd)
    self.cls_token = param(rngs, (1, 1, E), (None, None, "vit_embed"), std=std, dtype=pd)
    self.pos_embed = param(rngs, (1, g * g + 1, E), (None, None, "vit_embed"), std=std, dtype=pd)
    self.blocks = stacked(lambda r: Block(cfg, rngs=r), v.num_layers, rngs)
    if v.final_norm:
      self.final_norm = LayerNorm(E, eps=v.norm_eps, axis_name="vit_embed", param_dtype=pd)

  def __call__(self, vision_pixels):
    v, dtype = self.cfg.vision, dtype_of(self.cfg.dtype)
    B, N, C, S, _ = vision_pixels.shape
    p, g, E = v.patch_size, S // v.patch_size, v.hidden_size
    tiles = vision_pixels.astype(dtype).reshape(B * N, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)
    x = tiles.reshape(B * N, g * g, C * p * p) @ cast(self.patch_embed[...], dtype).reshape(C * p * p, E)
    x = x + cast(self.patch_bias[...], dtype)
    cls = jnp.broadcast_to(cast(self.cls_token[...], dtype), (B * N, 1, E))  # [1, 1, E] as stored
    x = jnp.concatenate([cls, x], axis=1) + cast(self.pos_embed[...], dtype)
    x = constrain(x, ACT)
    x = run_stacked(self.blocks, x, flat_segments(x), lo=0, hi=v.num_layers, remat=v.remat)
    if v.final_norm:
      x = self.final_norm(x)
    return x[:, 1:].reshape(B * N, g, g, E), []


class ShuffleProjector(nnx.Module):
  """Pixel shuffle (each merge x merge window of patches becomes one feature of merge^2 times
  the width), LayerNorm, and a two-layer MLP to the language model's width:
  `(hidden [B * N, g, g, E], taps)` -> (features `[B, N * tokens_per_tile, E_lm]`, None)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    wide = v.hidden_size * v.spatial_merge_size ** 2
    self.norm = LayerNorm(wide, eps=v.projector_norm_eps, axis_name="vit_embed", param_dtype=pd)
    self.fc1 = Linear(rngs, wide, cfg.hidden_size, ("vit_embed", "embed"), std=std, dtype=pd)
    self.fc2 = Linear(rngs, cfg.hidden_size, cfg.hidden_size, ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, hidden, taps, rows: int):
    n, g, _, E = hidden.shape
    m = self.cfg.vision.spatial_merge_size
    x = hidden.reshape(n, g // m, m, g // m, m, E).transpose(0, 1, 3, 2, 4, 5).reshape(n, (g // m) ** 2, m * m * E)
    x = self.fc2(activation(self.cfg.vision.projector_activation)(self.fc1(self.norm(x))))
    return x.reshape(rows, -1, x.shape[-1]), None
