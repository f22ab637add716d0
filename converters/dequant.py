"""Quantized Hugging Face releases, dequantized on the fly while streaming (numpy only).

Two storage formats are read:

- FP8 with block scales (DeepSeek-V3, Kimi-K2; `quantization_config.quant_method = "fp8"`):
  a linear weight `W [rows, cols]` is stored as float8 e4m3 next to `W_scale_inv`
  `[ceil(rows / br), ceil(cols / bc)]` (float32, or E8M0 bytes), `[br, bc] =
  weight_block_size` (default [128, 128]); the value is `fp8 * scale_inv` of its block. The
  edge blocks may be partial.
- MXFP4 (GPT-OSS; `quant_method = "mxfp4"`): expert weights as `<name>_blocks` `[X, R, G, 16]`
  uint8 (two e2m1 nibbles per byte, low nibble first) and `<name>_scales` `[X, R, G]` uint8
  (E8M0 exponents, bias 127): row r of expert x is `fp4 * 2**(scale - 127)` over G groups of
  32 values. The logical tensor is the transpose `[X, G * 32, R]`, the layout of Hugging Face's
  bf16 GPT-OSS checkpoints (`gate_up_proj` `[X, hidden, 2 * intermediate]`).

`DequantizedWeights(weights, hf_config)` puts a `WeightDir` behind the same `infos` / `read`
interface with every quantized tensor presented under its logical key as float32 (the scale
and block tensors disappear from `infos`). `read(key, rows=(r0, r1))` reads only the stored
rows (and scale rows) those logical rows need, so streaming import keeps its memory bound.
Both dequantizations are exact in float32: one multiplication by a power of two (MXFP4) or
by the block's float32 scale (FP8) of a value with few significant bits, the same single
rounding transformers' own dequantization performs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np

from jaxtrain.converters.errors import ConversionError, format_problems
from jaxtrain.converters.safetensors_io import TensorInfo

log = logging.getLogger("jaxtrain.converters")

FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                    np.float32)
FP8_CODES = ("F8_E4M3", "F8_E5M2")
SCALE_SUFFIX = "_scale_inv"
DEFAULT_FP8_BLOCK = (128, 128)


def e8m0_to_float(scales: np.ndarray) -> np.ndarray:
  """E8M0 exponent bytes -> float32 powers of two, 2**(byte - 127)."""
  return np.ldexp(np.float32(1.0), scales.astype(np.int32) - 127).astype(np.float32)


def fp8_block_dequantize(w: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int] = DEFAULT_FP8_BLOCK, *,
                         row0: int = 0) -> np.ndarray:
  """float8 `w` `[rows, cols]` (rows `row0 ...` of the full weight) times its block scales
  (`scale_inv` for the full weight, float32 or E8M0 bytes) -> float32."""
  br, bc = block
  rows, cols = w.shape[-2:]
  s = e8m0_to_float(scale_inv) if scale_inv.dtype == np.uint8 else scale_inv.astype(np.float32)
  s_rows = s[(row0 + np.arange(rows)) // br]  # [rows, col blocks]
  return w.astype(np.float32) * np.repeat(s_rows, bc, axis=1)[:, :cols]


def mxfp4_dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """`blocks` `[..., G, 16]` uint8, `scales` `[..., G]` uint8 -> float32 `[..., G * 32]`
  (low nibble = even element, high nibble = odd element)."""
  if blocks.shape[:-1] != scales.shape:
    raise ValueError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match")
  b = blocks.astype(np.uint8)
  vals = np.stack([FP4_E2M1[b & 0x0F], FP4_E2M1[b >> 4]], axis=-1).reshape(*b.shape[:-1], 2 * b.shape[-1])
  out = np.ldexp(vals, (scales.astype(np.int32) - 127)[..., None]).astype(np.float32)
  return out.reshape(*b.shape[:-2], b.shape[-2] * b.shape[-1] * 2)


@dataclasses.dataclass(frozen=True)
class _Quantized:
  kind: str  # "fp8" | "mxfp4"
  data: str  # stored key of the values (fp8 weight / mxfp4 blocks)
  scale: str  # stored key of the scales
  block: tuple[int, int] = DEFAULT_FP8_BLOCK


def _fp8_block(hf_config: dict) -> tuple[int, int]:
  qc = hf_config.get("quantization_config") or {}
  block = qc.get("weight_block_size")
  if block is None:
    return DEFAULT_FP8_BLOCK
  if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
    raise ConversionError(f"config.json: quantization_config.weight_block_size={block!r}: expected two positive "
                          f"integers")
  return int(block[0]), int(block[1])


class DequantizedWeights:
  """A `WeightDir` whose quantized tensors read as float32 under their logical keys."""

  def __init__(self, weights, hf_config: dict):
    self.inner = weights
    self.directory = weights.directory
    self.infos: dict[str, TensorInfo] = dict(weights.infos)
    self.quantized: dict[str, _Quantized] = {}
    self._scale_cache: tuple[str, np.ndarray] | None = None
    problems = []
    block = None
    for key, info in weights.infos.items():
      if info.dtype in FP8_CODES and not key.endswith(SCALE_SUFFIX):
        scale_key = key + SCALE_SUFFIX
        if scale_key not in weights.infos:
          continue  # reported by validation as a non-float tensor, naming the key
        block = block or _fp8_block(hf_config)
        s_info = weights.infos[scale_key]
        if len(info.shape) != 2:
          problems.append(f"{key}: FP8 block-quantized weights must be 2-D, got shape {list(info.shape)}")
          continue
        want = (math.ceil(info.shape[0] / block[0]), math.ceil(info.shape[1] / block[1]))
        if s_info.shape != want or s_info.dtype not in ("F32", "BF16", "F16", "U8"):
          problems.append(f"{scale_key} in {os.path.basename(s_info.file)}: shape {list(s_info.shape)} "
                          f"{s_info.dtype}; weight {key} {list(info.shape)} with weight_block_size {list(block)} "
                          f"needs {list(want)} float32 (or E8M0 uint8)")
          continue
        self.quantized[key] = _Quantized("fp8", key, scale_key, block)
        self.infos[key] = dataclasses.replace(info, dtype="F32", nbytes=math.prod(info.shape) * 4)
        del self.infos[scale_key]
      elif key.endswith("_blocks") and info.dtype == "U8":
        base = key[: -len("_blocks")]
        scale_key = base + "_scales"
        if scale_key not in weights.infos:
          problems.append(f"{key}: MXFP4 blocks without {scale_key}")
          continue
        s_info = weights.infos[scale_key]
        if len(info.shape) != 4 or info.shape[-1] != 16 or s_info.shape != info.shape[:-1] or s_info.dtype != "U8":
          problems.append(f"{key} {list(info.shape)} {info.dtype} / {scale_key} {list(s_info.shape)} {s_info.dtype}: "
                          f"expected MXFP4 blocks [experts, rows, groups, 16] uint8 and scales [experts, rows, groups] "
                          f"uint8")
          continue
        if base in weights.infos:
          problems.append(f"{base}: stored both unquantized and as MXFP4 ({key})")
          continue
        X, R, G, _ = info.shape
        shape = (X, G * 32, R)
        self.quantized[base] = _Quantized("mxfp4", key, scale_key)
        self.infos[base] = TensorInfo(base, info.file, shape, "F32", 0, math.prod(shape) * 4)
        del self.infos[key], self.infos[scale_key]
    if problems:
      raise ConversionError(format_problems(f"{self.directory}: invalid quantized tensors:", problems))
    if self.quantized:
      kinds = sorted({q.kind for q in self.quantized.values()})
      log.info("%s: dequantizing %d %s tensors to float32 while loading", self.directory, len(self.quantized),
               "/".join(kinds))

  @property
  def files(self):
    return self.inner.files

  @property
  def is_torch(self) -> bool:
    return self.inner.is_torch

  def _scales(self, key: str) -> np.ndarray:
    if self._scale_cache is None or self._scale_cache[0] != key:
      self._scale_cache = (key, self.inner.read(key))
    return self._scale_cache[1]

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    q = self.quantized.get(key)
    if q is None:
      return self.inner.read(key, rows)
    if q.kind == "fp8":
      w = self.inner.read(q.data, rows)
      return fp8_block_dequantize(w, self._scales(q.scale), q.block, row0=0 if rows is None else rows[0])
    blocks, scales = self.inner.read(q.data, rows), self.inner.read(q.scale, rows)
    return np.ascontiguousarray(np.swapaxes(mxfp4_dequantize(blocks, scales), -1, -2))


def quantization_method(hf_config: dict) -> str | None:
  qc = hf_config.get("quantization_config")
  return None if not qc else qc.get("quant_method")


__all__ = ["DequantizedWeights", "fp8_block_dequantize", "mxfp4_dequantize", "e8m0_to_float", "FP4_E2M1"]

