"""Gated feed-forward network (SwiGLU and friends) with gate and up projections fused into
one matmul."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.layers import activation, cast, dtype_of, param
from jaxtrain.parallel.rules import constrain


def gated_ffn(x, gate_up, down, act):
  """x `[..., E]`, gate_up `[E, 2, I]`, down `[I, E]`."""
  h = jnp.einsum("...e,eci->...ci", x, gate_up)
  return jnp.einsum("...i,ie->...e", act(h[..., 0, :]) * h[..., 1, :], down)


class MLP(nnx.Module):

  def __init__(self, hidden_size: int, intermediate_size: int, *, act: str, std: float, param_dtype: str,
               rngs: nnx.Rngs):
    pd = dtype_of(param_dtype)
    self.act = act
    self.gate_up = param(rngs, (hidden_size, 2, intermediate_size), ("embed", None, "mlp"), std=std, dtype=pd)
    self.down = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    y = gated_ffn(x, cast(self.gate_up[...], x.dtype), cast(self.down[...], x.dtype), activation(self.act))
    return constrain(y, ("act_batch", "act_seq", "act_embed"))
