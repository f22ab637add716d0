"""Low-rank adapters (LoRA) on projection weights: y = x @ W + scale * (x @ A) @ B.

Model modules add `delta(self, name, x)` to a projection's output; it is zero unless an
adapter named `<name>_lora` was attached to the module (jaxtrain/posttrain/lora.py attaches
them from the config; the model code only does the math). Adapter factors are `LoRAParam`s, a
subclass of `nnx.Param`, so a model splits into trainable adapters and frozen base weights by
variable type.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.layers import cast


class LoRAParam(nnx.Param):
  """A LoRA factor: the only trainable parameters of a LoRA run."""


class LoRA(nnx.Module):
  """scale * (x @ a) @ b. `a` [in..., r] contracts the last `n_in` dims of x; `b` [r, out...].
  fused (a gate/up pair stored as one [E, 2, I] weight): a [E, 2, r], b [2, r, I], one
  independent adapter per fused projection. Expert adapters (`experts`) carry a leading expert
  axis and are applied inside the grouped matmuls (parallel/moe), not by calling this."""

  def __init__(self, a: LoRAParam, b: LoRAParam, *, scale: float, n_in: int = 1, fused: bool = False,
               experts: bool = False):
    self.a, self.b = a, b
    self.scale, self.n_in, self.fused, self.experts = float(scale), int(n_in), bool(fused), bool(experts)

  def __call__(self, x):
    a, b = cast(self.a[...], x.dtype), cast(self.b[...], x.dtype)
    if self.fused:
      return self.scale * jnp.einsum("...cr,cri->...ci", jnp.einsum("...e,ecr->...cr", x, a), b)
    return self.scale * jnp.tensordot(jnp.tensordot(x, a, self.n_in), b, 1)


def adapter(module: nnx.Module, name: str) -> LoRA | None:
  return getattr(module, f"{name}_lora", None)


def delta(module: nnx.Module, name: str, x):
  """The adapter's contribution to projection `name` of `module` for input x (0 without one)."""
  lora = adapter(module, name)
  return 0 if lora is None else lora(x)
