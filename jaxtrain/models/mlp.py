"""Gated feed-forward network (SwiGLU and friends) with gate and up projections fused into
one matmul (optionally with LoRA adapters, models/adapters.py)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.adapters import delta
from jaxtrain.models.layers import activation, cast, dtype_of, param
from jaxtrain.parallel.rules import constrain


class MLP(nnx.Module):

  def __init__(self, hidden_size: int, intermediate_size: int, *, act: str, std: float, param_dtype: str,
               rngs: nnx.Rngs):
    pd = dtype_of(param_dtype)
    self.act = act
    self.gate_up = param(rngs, (hidden_size, 2, intermediate_size), ("embed", None, "mlp"), std=std, dtype=pd)
    self.down = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    act = activation(self.act)
    h = jnp.einsum("...e,eci->...ci", x, cast(self.gate_up[...], x.dtype)) + delta(self, "gate_up", x)
    a = act(h[..., 0, :]) * h[..., 1, :]
    y = jnp.einsum("...i,ie->...e", a, cast(self.down[...], x.dtype)) + delta(self, "down", a)
    return constrain(y, ("act_batch", "act_seq", "act_embed"))
