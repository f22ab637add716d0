"""Gated feed-forward network (SwiGLU and friends) with gate and up projections fused into
one matmul (optionally with LoRA adapters, models/adapters.py), optionally run over the sequence
in chunks (long rows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.adapters import delta
from jaxtrain.models.layers import activation, cast, dtype_of, linear, param
from jaxtrain.parallel.rules import constrain


def in_chunks(fn, xs, chunk: int):
  """`fn` over `[B, T, ...]` arrays `xs` (a tuple) in chunks of `chunk` positions of every row, each
  chunk recomputed in the backward pass: the intermediates of `fn` then exist for one chunk at a
  time (long rows). Token-wise `fn` only; `chunk` 0 (or one that does not divide T) = one call."""
  T = xs[0].shape[1]
  if not chunk or chunk >= T or T % chunk:
    return fn(*xs)
  n = T // chunk
  split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0)  # noqa: E731
  out = jax.lax.map(lambda args: jax.checkpoint(fn)(*args), tuple(split(a) for a in xs))
  return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], T, *a.shape[3:]), out)


class MLP(nnx.Module):

  def __init__(self, hidden_size: int, intermediate_size: int, *, act: str, std: float, param_dtype: str,
               rngs: nnx.Rngs, chunk: int = 0, fp8: str | None = None):
    pd = dtype_of(param_dtype)
    self.act = act
    self.chunk = chunk  # tokens of a row per chunk (0 = the whole row at once)
    self.fp8 = fp8
    self.gate_up = param(rngs, (hidden_size, 2, intermediate_size), ("embed", None, "mlp"), std=std, dtype=pd)
    self.down = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    gate_up, down, act = cast(self.gate_up[...], x.dtype), cast(self.down[...], x.dtype), activation(self.act)

    def ffn(x):
      h = linear(x, gate_up, fp8=self.fp8) + delta(self, "gate_up", x)
      a = act(h[..., 0, :]) * h[..., 1, :]
      return linear(a, down, fp8=self.fp8) + delta(self, "down", a)

    y = in_chunks(ffn, (x,), self.chunk)
    return constrain(y, ("act_batch", "act_seq", "act_embed"))
