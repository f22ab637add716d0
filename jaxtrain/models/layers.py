"""Small building blocks: parameters with logical axes, RMSNorm, activations, dtypes."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain import kernels

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Rematerialisation policies by config name (model.remat, model.vision.remat); "none" = keep all.
_policies = jax.checkpoint_policies
REMAT = {
    "full": _policies.nothing_saveable,
    "save_dots": _policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": _policies.save_only_these_names("attention_out"),
    # Host offload (platforms whose host memory is separate, GPU/TPU): what save_dots keeps, or
    # only each layer's input (full remat otherwise), moved to pinned host memory.
    "offload_dots": _policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    "offload_input": _policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=["layer_input"], offload_src="device",
        offload_dst="pinned_host"),
}


def remat_policy(name: str):
  """The `jax.checkpoint` policy of a remat name (None for "none")."""
  return REMAT.get(name)


def dtype_of(name: str):
  return DTYPES[name]


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Sequence[str | None], *, init: str = "normal",
          std: float = 0.02, dtype=jnp.float32) -> nnx.Param:
  """A parameter annotated with logical axis names (metadata `logical_axes`). Layers
  stacked by the decoder gain a leading 'layers' axis; see
  `jaxtrain.parallel.rules.param_logical_axes`."""
  shape = tuple(int(s) for s in shape)
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, dtype)
  elif init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value, logical_axes=tuple(axes))


class ModelState(nnx.Variable):
  """Non-trainable model state (e.g. the routers' score-correction biases): read by the forward
  pass, updated by the train step outside the optimizer, carried in `TrainState.model_state`
  and checkpointed with it. Splitting a model by `nnx.Param` leaves these in the rest."""


def state_variable(shape: Sequence[int], axes: Sequence[str | None], *, dtype=jnp.float32) -> ModelState:
  """A zero-initialised `ModelState` annotated with logical axes like `param`."""
  shape = tuple(int(s) for s in shape)
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  return ModelState(jnp.zeros(shape, dtype), logical_axes=tuple(axes))


def linear(x, w, *, contract: int = 1, fp8: str | None = None):
  """A projection: x `[..., K1..Kc]` contracted with w `[K1..Kc, N...]` (c = `contract`). With
  `fp8` (a `kernels.fp8` implementation) the GEMM runs in FP8 with fine-grained scaling."""
  if fp8 is None:
    return jnp.tensordot(x, w, axes=contract)
  return kernels.fp8.linear(x, w, contract=contract, impl=fp8)


def cast(x, dtype):
  return x if x.dtype == dtype else x.astype(dtype)


class RMSNorm(nnx.Module):
  """y = w * x / rms(x), normalised in fp32 then cast back (as Hugging Face does)."""

  def __init__(self, dim: int, *, eps: float, axis_name: str, param_dtype=jnp.float32):
    self.scale = param(None, (dim,), (axis_name,), init="ones", dtype=param_dtype)
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(dtype) * xf.astype(dtype)


class LayerNorm(nnx.Module):
  """y = (x - mean) / sqrt(var + eps) * w + b, normalised in fp32 then cast back."""

  def __init__(self, dim: int, *, eps: float, axis_name: str, param_dtype=jnp.float32):
    self.scale = param(None, (dim,), (axis_name,), init="ones", dtype=param_dtype)
    self.bias = param(None, (dim,), (axis_name,), init="zeros", dtype=param_dtype)
    self.eps = eps

  def __call__(self, x):
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    xf = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (xf * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def glu(kind: str, act: str = "silu", *, alpha: float = 1.702, limit: float = 7.0):
  """The gated unit (gate, up) -> hidden of a feed-forward network.

  glu: act(gate) * up. clamped_swiglu (GPT-OSS): gate clamped above at `limit`, up clamped to
  [-limit, limit], then (up + 1) * gate * sigmoid(alpha * gate)."""
  if kind == "glu":
    fn = activation(act)
    return lambda gate, up: fn(gate) * up
  if kind == "clamped_swiglu":
    def clamped_swiglu(gate, up):
      gate = jnp.minimum(gate, limit)
      up = jnp.clip(up, -limit, limit)
      return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))
    return clamped_swiglu
  raise ValueError(f"unknown gated unit {kind!r}")


def activation(name: str):
  return {
      "silu": jax.nn.silu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
  }[name]
