"""Gated feed-forward network (SwiGLU and friends) with gate and up projections fused into
one matmul."""

from __future__ import annotations

from flax import nnx

from jaxtrain.models.layers import activation, cast, dtype_of, linear, param
from jaxtrain.parallel.rules import constrain


def gated_ffn(x, gate_up, down, act, fp8=None):
  """x `[..., E]`, gate_up `[E, 2, I]`, down `[I, E]`; `fp8`: see `layers.linear`."""
  h = linear(x, gate_up, fp8=fp8)
  return linear(act(h[..., 0, :]) * h[..., 1, :], down, fp8=fp8)


class MLP(nnx.Module):

  def __init__(self, hidden_size: int, intermediate_size: int, *, act: str, std: float, param_dtype: str,
               rngs: nnx.Rngs, fp8: str | None = None):
    pd = dtype_of(param_dtype)
    self.act = act
    self.fp8 = fp8
    self.gate_up = param(rngs, (hidden_size, 2, intermediate_size), ("embed", None, "mlp"), std=std, dtype=pd)
    self.down = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=std, dtype=pd)

  def __call__(self, x):
    y = gated_ffn(x, cast(self.gate_up[...], x.dtype), cast(self.down[...], x.dtype), activation(self.act), self.fp8)
    return constrain(y, ("act_batch", "act_seq", "act_embed"))
