"""Pieces both vision towers use: stacked (scanned) blocks, biased projections, and attention
inside each image."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain import kernels
from jaxtrain.models.layers import REMAT, cast, param


def stacked(make, count: int, rngs: nnx.Rngs):
  """`count` independently initialised modules `make(rngs)` with parameters stacked on axis 0."""

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def build(rngs):
    return make(rngs)

  return build(rngs)


def run_stacked(blocks, x, *args, lo: int, hi: int, remat: str = "none"):
  """Applies stacked blocks `lo..hi-1` in order (one `lax.scan`): x = block(x, *args)."""
  graphdef, state = nnx.split(blocks)
  state = jax.tree.map(lambda a: a[lo:hi], state)

  def body(x, layer_state):
    return nnx.merge(graphdef, layer_state)(x, *args), None

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT[remat], prevent_cse=False)
  return jax.lax.scan(body, x, state)[0]


def layer(blocks, index: int):
  """The `index`-th of stacked modules, as a module."""
  graphdef, state = nnx.split(blocks)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[index], state))


class Linear(nnx.Module):
  """y = x @ w + b over the last axis; `w` `[in, out]` with logical axes `axes`."""

  def __init__(self, rngs, d_in: int, d_out: int, axes, *, bias: bool = True, std: float, dtype):
    self.w = param(rngs, (d_in, d_out), axes, std=std, dtype=dtype)
    self.b = param(None, (d_out,), axes[1:], init="zeros", dtype=dtype) if bias else None

  def __call__(self, x):
    y = x @ cast(self.w[...], x.dtype)
    return y if self.b is None else y + cast(self.b[...], x.dtype)


def image_attention(q, k, v, segments, impl: str):
  """Bidirectional attention among the patches of one image (frame): q, k, v `[B, P, H, D]`,
  `segments` `[B, P]` (0 = padding, which attends to nothing)."""
  return kernels.attention(q, k, v, q_segment_ids=segments, kv_segment_ids=segments, causal=False, impl=impl)


def flat_segments(x):
  """One segment per leading row: `[B, P]` ones."""
  return jnp.ones(x.shape[:2], jnp.int32)
