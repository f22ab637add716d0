"""The vision transformer with 2D rotary positions (Qwen3-VL's): patches of (temporal, height,
width) pixels embedded by one matmul, a learned position grid resampled bilinearly to each
image, pre-norm blocks attending within each image frame, and the patch merger projector with
its DeepStack copies. Inputs are the per-row arrays of `layout.rope_vit_inputs`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.config import ModelConfig, RopeScaling
from jaxtrain.models.layers import LayerNorm, activation, cast, dtype_of, param
from jaxtrain.models.rope import inv_frequencies
from jaxtrain.models.vision.common import Linear, image_attention, layer, run_stacked, stacked
from jaxtrain.parallel.rules import constrain

ACT = ("act_vit_batch", "act_vit_seq", "act_vit_embed")


def rotate_half(x):
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_2d(hw, head_dim: int, theta: float):
  """cos, sin `[B, P, head_dim]`: the first quarter of frequencies turn with the row, the
  second with the column, both halves of the head repeat them."""
  inv_freq, _ = inv_frequencies(head_dim // 2, theta, RopeScaling(), 0)
  freqs = hw.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, P, 2, head_dim / 4]
  half = jnp.concatenate([freqs[..., 0, :], freqs[..., 1, :]], axis=-1)
  emb = jnp.concatenate([half, half], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    E, H, D, I = v.hidden_size, v.num_heads, v.head_dim, v.intermediate_size
    self.act, self.attention_impl = v.activation, cfg.attention_impl
    self.norm1 = LayerNorm(E, eps=v.norm_eps, axis_name="vit_embed", param_dtype=pd)
    self.qkv = param(rngs, (E, 3, H, D), ("vit_embed", None, "vit_heads", "vit_head_dim"), std=std, dtype=pd)
    self.qkv_bias = param(None, (3, H, D), (None, "vit_heads", "vit_head_dim"), init="zeros", dtype=pd)
    self.proj = param(rngs, (H, D, E), ("vit_heads", "vit_head_dim", "vit_embed"), std=std, dtype=pd)
    self.proj_bias = param(None, (E,), ("vit_embed",), init="zeros", dtype=pd)
    self.norm2 = LayerNorm(E, eps=v.norm_eps, axis_name="vit_embed", param_dtype=pd)
    self.fc1 = Linear(rngs, E, I, ("vit_embed", "vit_mlp"), std=std, dtype=pd)
    self.fc2 = Linear(rngs, I, E, ("vit_mlp", "vit_embed"), std=std, dtype=pd)

  def __call__(self, x, cos, sin, segments):
    dtype = x.dtype
    h = self.norm1(x)
    qkv = jnp.einsum("bpe,echd->bpchd", h, cast(self.qkv[...], dtype)) + cast(self.qkv_bias[...], dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    q = (q.astype(jnp.float32) * c + rotate_half(q.astype(jnp.float32)) * s).astype(dtype)  # fp32 as HF
    k = (k.astype(jnp.float32) * c + rotate_half(k.astype(jnp.float32)) * s).astype(dtype)
    out = image_attention(q, k, v, segments, self.attention_impl)
    x = x + jnp.einsum("bphd,hde->bpe", out, cast(self.proj[...], dtype)) + cast(self.proj_bias[...], dtype)
    x = x + self.fc2(activation(self.act)(self.fc1(self.norm2(x))))
    return constrain(x, ACT)


class RopeViT(nnx.Module):
  """`__call__(vision_patches, vision_segments, vision_hw, vision_pos_index, vision_pos_weight)`
  -> (last hidden states `[B, P, E]`, hidden states after each DeepStack layer)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    E = v.hidden_size
    self.patch_embed = param(rngs, (v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size, E),
                             (None, None, None, None, "vit_embed"), std=std, dtype=pd)
    self.patch_bias = param(None, (E,), ("vit_embed",), init="zeros", dtype=pd)
    self.pos_embed = param(rngs, (v.num_position_embeddings, E), (None, "vit_embed"), std=std, dtype=pd)
    self.blocks = stacked(lambda r: Block(cfg, rngs=r), v.num_layers, rngs)

  def __call__(self, vision_patches, vision_segments, vision_hw, vision_pos_index, vision_pos_weight):
    v, dtype = self.cfg.vision, dtype_of(self.cfg.dtype)
    w = cast(self.patch_embed[...], dtype).reshape(v.patch_dim, v.hidden_size)
    x = vision_patches.astype(dtype) @ w + cast(self.patch_bias[...], dtype)
    taps = jnp.take(cast(self.pos_embed[...], dtype), vision_pos_index, axis=0)  # [B, P, 4, E]
    x = x + jnp.sum(taps * vision_pos_weight[..., None].astype(dtype), axis=2)
    x = constrain(x, ACT)
    cos, sin = rope_2d(vision_hw, v.head_dim, v.rope_theta)
    deep, lo = [], 0
    for stop in sorted(set(v.deepstack_layers)) + [v.num_layers - 1]:
      x = run_stacked(self.blocks, x, cos, sin, vision_segments, lo=lo, hi=stop + 1, remat=v.remat)
      lo = stop + 1
      deep.append(x)
    taps_by_layer = dict(zip(sorted(set(v.deepstack_layers)), deep))
    return x, [taps_by_layer[i] for i in v.deepstack_layers]


class Merger(nnx.Module):
  """LayerNorm, then each window of merge x merge patches concatenated and projected by a
  two-layer GELU MLP to the language model's width. `postshuffle`: the norm runs after the
  concatenation (the DeepStack mergers) instead of per patch."""

  def __init__(self, cfg: ModelConfig, *, postshuffle: bool, rngs: nnx.Rngs):
    v, pd, std = cfg.vision, dtype_of(cfg.param_dtype), cfg.initializer_range
    self.window = v.spatial_merge_size ** 2
    wide = v.hidden_size * self.window
    self.postshuffle = postshuffle
    self.norm = LayerNorm(wide if postshuffle else v.hidden_size, eps=1e-6, axis_name="vit_embed", param_dtype=pd)
    self.fc1 = Linear(rngs, wide, wide, ("vit_embed", "vit_mlp"), std=std, dtype=pd)
    self.fc2 = Linear(rngs, wide, cfg.hidden_size, ("vit_mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    B, P, E = x.shape
    if not self.postshuffle:
      x = self.norm(x)
    x = x.reshape(B, P // self.window, E * self.window)
    if self.postshuffle:
      x = self.norm(x)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class MergerProjector(nnx.Module):
  """The patch merger and one postshuffle merger per DeepStack layer: `(hidden, taps)` ->
  (features `[B, P / window, E_lm]`, DeepStack features `[k, B, P / window, E_lm]` or None)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.count = len(cfg.vision.deepstack_layers)
    self.merger = Merger(cfg, postshuffle=False, rngs=rngs)
    if self.count:
      self.deepstack = stacked(lambda r: Merger(cfg, postshuffle=True, rngs=r), self.count, rngs)

  def __call__(self, hidden, taps, rows: int):
    features = self.merger(hidden)
    if not self.count:
      return features, None
    return features, jnp.stack([layer(self.deepstack, i)(t) for i, t in enumerate(taps)])
