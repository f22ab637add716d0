"""Rotary position embeddings: plain, linear, llama3 and yarn frequency schedules, computed
as Hugging Face `modeling_rope_utils` defines them, and multimodal positions (MRoPE: three
position rows, temporal / height / width, interleaved over the frequencies)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxtrain.models.config import ModelConfig, RopeScaling


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_frequencies(dim: int, theta: float, scaling: RopeScaling, max_position_embeddings: int):
  """Returns (inv_freq [dim // 2] float32, attention_factor applied to cos/sin)."""
  exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  pos_freqs = np.power(np.float32(theta), exponent, dtype=np.float32)
  inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
  kind = scaling.type
  if kind == "none":
    return inv_freq, 1.0
  if kind == "linear":
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32), 1.0
  if kind == "llama3":
    factor = scaling.factor
    old_len = scaling.original_max_position_embeddings or max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
  if kind == "yarn":
    factor = scaling.factor
    original = scaling.original_max_position_embeddings or max_position_embeddings
    if scaling.attention_factor:
      attention_factor = scaling.attention_factor
    elif scaling.mscale and scaling.mscale_all_dim:
      attention_factor = yarn_mscale(factor, scaling.mscale) / yarn_mscale(factor, scaling.mscale_all_dim)
    else:
      attention_factor = yarn_mscale(factor)

    def correction_dim(rotations):
      return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
      low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
      high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation = 1 - ramp
    interp = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    inv_freq = interp * (1 - extrapolation) + inv_freq * extrapolation
    return inv_freq.astype(np.float32), float(attention_factor)
  raise ValueError(f"unknown rope scaling type {kind!r}")


def mrope_rows(section: tuple[int, ...], half: int) -> np.ndarray:
  """Which position row (0 temporal, 1 height, 2 width) drives each of the `half` frequencies:
  interleaved t, h, w, t, h, w, ... while the height / width counts last, temporal after."""
  rows = np.zeros(half, np.int32)
  for row in (1, 2):
    idx = np.arange(row, min(3 * section[row], half), 3)
    rows[idx] = row
  return rows


def rope_tables(positions, cfg: ModelConfig, dim: int | None = None):
  """cos, sin `[B, T, dim]` for integer positions `[B, T]`, or `[B, T, 3]` (temporal, height,
  width) for a model with `mrope_section` (fp32)."""
  dim = cfg.resolved_head_dim if dim is None else dim
  inv_freq, factor = inv_frequencies(dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)
  if positions.ndim == 3:
    if not cfg.mrope_section:
      raise ValueError(f"positions {positions.shape} have position rows but model.mrope_section is not set")
    rows = jnp.asarray(mrope_rows(cfg.mrope_section, dim // 2))
    pos = jnp.take(positions, rows, axis=-1)  # [B, T, dim // 2]: each frequency's own row
    freqs = pos.astype(jnp.float32) * jnp.asarray(inv_freq)
  else:
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb) * factor, jnp.sin(emb) * factor


def apply_rope(x, cos, sin):
  """x `[B, T, H, D]` rotated by halves (the Hugging Face / NeoX layout)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin
