"""QLoRA: the frozen base's projection weights stored in 4-bit NF4 (or int8) blocks with one
absmax scale per block along the last axis, dequantized on the fly where the model reads them.

A quantized weight is a `QuantizedWeight` (a pytree of codes and scales) in place of the
parameter's array: `param[...]` dequantizes it (nnx reads a variable's value with `value[...]`),
so model code is unchanged and the dequantized weight lives only inside the step, one layer at a
time under the layer scan. NF4 codes are the 16 quantiles of a standard normal (QLoRA, Dettmers
et al. 2023), two per byte; int8 codes are symmetric round-to-nearest.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding

from jaxtrain.config import ConfigError
from jaxtrain.parallel.rules import logical_to_spec, param_logical_axes

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
KINDS = ("none", "nf4", "int8")
# The projection weights inside decoder layers that QLoRA stores quantized (router, norms,
# biases, embeddings and the LM head stay in full precision, as in QLoRA).
QUANTIZED_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up", "down")


@struct.dataclass
class QuantizedWeight:
  codes: jax.Array  # nf4: uint8 [..., n / 2] (two codes per byte); int8: int8 [..., n]
  scales: jax.Array  # float32 [..., n / block]: each block's absmax
  kind: str = struct.field(pytree_node=False)
  block: int = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False)  # of the dequantized weight

  @property
  def shape(self) -> tuple[int, ...]:
    n = self.codes.shape[-1] * (2 if self.kind == "nf4" else 1)
    return tuple(self.codes.shape[:-1]) + (n,)

  def dequantize(self) -> jax.Array:
    if self.kind == "nf4":
      hi, lo = self.codes >> 4, self.codes & 0xF
      idx = jnp.stack([hi, lo], axis=-1).reshape(self.shape)
      values = jnp.asarray(NF4)[idx.astype(jnp.int32)]
    else:
      values = self.codes.astype(jnp.float32) / 127.0
    blocks = values.reshape(*self.shape[:-1], -1, self.block) * self.scales[..., None]
    return blocks.reshape(self.shape).astype(self.dtype)

  def __getitem__(self, key):
    return self.dequantize()[key]


def block_size(n: int, largest: int) -> int:
  """The largest even divisor of n that is at most `largest` (0 when n is odd)."""
  for b in range(min(n, largest), 1, -1):
    if n % b == 0 and b % 2 == 0:
      return b
  return 0


def quantize(w: jax.Array, kind: str, block: int) -> QuantizedWeight:
  shape = w.shape
  x = w.astype(jnp.float32).reshape(*shape[:-1], -1, block)
  scales = jnp.max(jnp.abs(x), axis=-1)
  safe = jnp.where(scales == 0, 1.0, scales)[..., None]
  normalized = (x / safe).reshape(shape)
  if kind == "nf4":
    midpoints = jnp.asarray((NF4[1:] + NF4[:-1]) / 2)
    idx = jnp.searchsorted(midpoints, normalized).astype(jnp.uint8)
    codes = (idx[..., 0::2] << 4) | idx[..., 1::2]
  else:
    codes = jnp.round(normalized * 127.0).astype(jnp.int8)
  return QuantizedWeight(codes, scales, kind=kind, block=block, dtype=jnp.dtype(w.dtype).name)


@dataclasses.dataclass(frozen=True)
class Quantizer:
  kind: str
  block: int

  @classmethod
  def from_config(cls, lora_cfg) -> "Quantizer":
    if lora_cfg.quantize not in KINDS[1:]:
      raise ConfigError(f"config lora.quantize: {lora_cfg.quantize!r} is not one of {KINDS}")
    return cls(lora_cfg.quantize, int(lora_cfg.quant_block))

  def _block(self, path, shape) -> int:
    """Block size for parameter `path` of `shape`, 0 when it stays in full precision."""
    name = str(path[-1])
    if "stages" not in map(str, path) or name not in QUANTIZED_NAMES or len(shape) < 2:
      return 0
    return block_size(shape[-1], self.block)

  def shardings(self, abstract_base, mesh):
    """The frozen base's shardings: codes and scales split like the weight they encode."""
    def one(path, var):
      shape = tuple(var.get_value().shape)
      axes = param_logical_axes(var)
      b = self._block(path, shape)
      spec = lambda s: NamedSharding(mesh, logical_to_spec(axes, s, mesh))  # noqa: E731
      if not b:
        return var.replace(spec(shape))
      codes_shape = shape[:-1] + (shape[-1] // 2 if self.kind == "nf4" else shape[-1],)
      return var.replace(QuantizedWeight(spec(codes_shape), spec(shape[:-1] + (shape[-1] // b,)),
                                         kind=self.kind, block=b, dtype=jnp.dtype(var.get_value().dtype).name))

    return _map_params(one, abstract_base)

  def _quantize_tree(self, params):
    return _map_params(lambda path, var: (var.replace(quantize(var.get_value(), self.kind, b))
                                          if (b := self._block(path, var.get_value().shape)) else var), params)

  def quantize(self, base, shardings):
    """Full-precision base (donated) -> the frozen base with its projections quantized."""
    return jax.jit(self._quantize_tree, out_shardings=shardings, donate_argnums=0)(base)

  def dequantized(self, base):
    """The base as a QLoRA model computes with it: every projection it stores quantized
    replaced by its dequantized blocks (same shapes and dtypes as `base`)."""
    def one(path, var):
      b = self._block(path, var.get_value().shape)
      return var.replace(quantize(var.get_value(), self.kind, b).dequantize()) if b else var

    return jax.jit(lambda params: _map_params(one, params))(base)

  def abstract(self, abstract_base):
    """The quantized base's shapes and dtypes, without computing anything."""
    return jax.eval_shape(self._quantize_tree, abstract_base)


def _map_params(fn, state: nnx.State) -> nnx.State:
  return nnx.from_flat_state([(path, fn(path, var)) for path, var in nnx.to_flat_state(state)])


def nbytes(x) -> int:
  return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
