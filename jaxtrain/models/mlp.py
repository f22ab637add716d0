"""Gated feed-forward network (SwiGLU and friends) with gate and up projections fused into
one matmul (optionally with LoRA adapters, models/adapters.py)."""

from __future__ import annotations

from flax import nnx

from jaxtrain.models.adapters import delta
from jaxtrain.models.layers import activation, cast, dtype_of, linear, param
from jaxtrain.parallel.rules import constrain


class MLP(nnx.Module):

  def __init__(self, hidden_size: int, intermediate_size: int, *, act: str, std: float, param_dtype: str,
               rngs: nnx.Rngs, fp8: str | None = None):
    pd = dtype_of(param_dtype)
    self.act = act
    self.fp8 = fp8
    self.gate_up = param(rngs, (hidden_size, 2, intermediate_size), ("embed", None, "mlp"), std=std, dtype=pd)
    self.down = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    act = activation(self.act)
    h = linear(x, cast(self.gate_up[...], x.dtype), fp8=self.fp8) + delta(self, "gate_up", x)
    a = act(h[..., 0, :]) * h[..., 1, :]
    y = linear(a, cast(self.down[...], x.dtype), fp8=self.fp8) + delta(self, "down", a)
    return constrain(y, ("act_batch", "act_seq", "act_embed"))
