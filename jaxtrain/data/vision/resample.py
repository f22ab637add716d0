"""Image resizing as transformers' two image backends do it, without torch.

- `resize_pil`: Pillow's `Image.resize` (transformers' PIL/NumPy processors, e.g.
  `Qwen2VLImageProcessorPil`, `GotOcr2ImageProcessorPil`).
- `resize_torch`: the result of `torchvision.transforms.v2.functional.resize` on uint8 CPU tensors
  with antialiasing, which is `torch.nn.functional.interpolate(..., antialias=True)` on uint8:
  PyTorch's port of Pillow-SIMD's fixed-point resampler (int16 weights whose precision depends on
  the largest weight, a horizontal pass into a uint8 buffer, then a vertical pass). transformers'
  torchvision ("fast") image processors and all of its video processors resize this way; it
  differs from Pillow by up to 2 levels on ~1% of pixels, so both are needed to be exact.

Both take and return uint8 [..., H, W, C].
"""

from __future__ import annotations

import math

import numpy as np

BILINEAR, BICUBIC = 2, 3  # PIL.Image.Resampling codes, as in preprocessor_config.json "resample"


def resize_pil(image: np.ndarray, height: int, width: int, resample: int = BICUBIC) -> np.ndarray:
  from PIL import Image

  return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))


def _cubic(x: np.ndarray) -> np.ndarray:
  a = -0.5  # Pillow's (and PyTorch's antialiasing) bicubic coefficient
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
  return np.maximum(1.0 - np.abs(x), 0.0)


_FILTERS = {BILINEAR: (_triangle, 2), BICUBIC: (_cubic, 4)}


def _weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
  """PyTorch's antialiasing taps: first input index [out], int16-valued weights [out, taps]
  (zero past each output's support), and their precision in bits."""
  fn, interp_size = _FILTERS[resample]
  scale = in_size / out_size
  support = interp_size * 0.5 * scale if scale >= 1.0 else interp_size * 0.5
  taps = int(math.ceil(support)) * 2 + 1
  invscale = 1.0 / scale if scale >= 1.0 else 1.0
  center = scale * (np.arange(out_size) + 0.5)
  lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C++ casts truncate toward zero
  size = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - lo, 0, taps)
  k = np.arange(taps)
  w = np.where(k < size[:, None], fn((k + lo[:, None] - center[:, None] + 0.5) * invscale), 0.0)
  total = w.sum(axis=1, keepdims=True)
  w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
  precision = 0
  while precision < 22 and int(0.5 + w.max() * (1 << (precision + 1))) < (1 << 15):
    precision += 1
  scaled = w * (1 << precision)
  ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int64)
  return lo, ints, precision


def _pass(x: np.ndarray, axis: int, out_size: int, resample: int) -> np.ndarray:
  in_size = x.shape[axis]
  lo, ints, precision = _weights(in_size, out_size, resample)
  # int32 sums cannot overflow: |weights| < 2**14 each, so a tap sum stays under taps * 2**22.
  dtype = np.int32 if ints.shape[1] < 500 else np.int64
  moved = np.moveaxis(x, axis, -1).astype(dtype)
  ints = ints.astype(dtype)
  acc = np.full(moved.shape[:-1] + (out_size,), 1 << (precision - 1), dtype)
  for k in range(ints.shape[1]):
    if ints[:, k].any():
      acc += ints[:, k] * moved[..., np.minimum(lo + k, in_size - 1)]
  out = np.clip(acc >> precision, 0, 255).astype(np.uint8)  # arithmetic shift: floor, as the kernel
  return np.moveaxis(out, -1, axis)


def resize_torch(image: np.ndarray, height: int, width: int, resample: int = BICUBIC) -> np.ndarray:
  if resample not in _FILTERS:
    raise ValueError(f"resample={resample}: only bilinear (2) and bicubic (3) are supported for torchvision-style "
                     "resizing")
  out = image
  if image.shape[-2] != width:
    out = _pass(out, out.ndim - 2, width, resample)
  if image.shape[-3] != height:
    out = _pass(out, out.ndim - 3, height, resample)
  return out


def normalize(image: np.ndarray, rescale: float | None, mean, std, torch_style: bool) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 [..., C, H, W]: x * rescale, then (x - mean) / std.

  torch_style: transformers' torchvision backends fold the rescale into mean and std in float32
  ((x - mean / rescale) / (std / rescale)); the PIL backends rescale in float64, cast to float32,
  then normalize in float32. The two agree to ~1e-7."""
  x = np.moveaxis(image, -1, -3)
  shape = (-1, 1, 1)
  if mean is None:
    out = x.astype(np.float64) * rescale if rescale else x.astype(np.float64)
    return out.astype(np.float32)
  mean32 = np.asarray(mean, np.float32).reshape(shape)
  std32 = np.asarray(std, np.float32).reshape(shape)
  if torch_style:
    if rescale:
      inv = np.float32(1.0 / rescale)
      mean32, std32 = mean32 * inv, std32 * inv
    return (x.astype(np.float32) - mean32) / std32
  scaled = (x.astype(np.float64) * rescale).astype(np.float32) if rescale else x.astype(np.float32)
  return (scaled - mean32) / std32
