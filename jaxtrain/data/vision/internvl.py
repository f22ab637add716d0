"""InternVL inputs: dynamic-resolution tiling with a thumbnail tile, video frames as single tiles,
and the `<img><IMG_CONTEXT>...</img>` expansion — what transformers' `GotOcr2ImageProcessor`,
`InternVLVideoProcessor` and `InternVLProcessor` produce.

An image is resized to the tile grid (columns x rows of `size`) whose aspect ratio is closest to
its own (ties go to more tiles while they cover less than twice the image), cut into tiles row by
row, and, when that gives more than one tile, followed by the whole image resized to one tile.
Every tile becomes `image_seq_length` context tokens.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from jaxtrain.data.vision import media, resample
from jaxtrain.data.vision.qwen_vl import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Pixels, _norm


@functools.lru_cache(maxsize=16)
def tile_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
  """(columns, rows) with min_tiles <= columns * rows <= max_tiles, fewest tiles first."""
  grids = [(w, h) for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1) if min_tiles <= w * h <= max_tiles]
  return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def best_grid(height: int, width: int, tile_h: int, tile_w: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
  aspect, area = width / height, width * height
  best, best_diff = (1, 1), float("inf")
  for cols, rows in tile_grids(min_tiles, max_tiles):
    diff = abs(aspect - cols / rows)
    if diff < best_diff:
      best, best_diff = (cols, rows), diff
    elif diff == best_diff and area > 0.5 * tile_h * tile_w * cols * rows:
      best = (cols, rows)
  return best


def sample_frames(total: int, video_fps: float, *, num_frames: int | None, fps: float | None,
                  initial_shift: bool | float) -> np.ndarray:
  """InternVL: `num_frames` (or `fps` per second) frames at even steps, from the middle of the
  first step when initial_shift is True (torch.arange in float32, truncated)."""
  if num_frames is None and fps is not None:
    num_frames = int(total / video_fps * fps)
  if num_frames is None:
    return np.arange(total)
  if num_frames > total:
    raise ValueError(f"cannot sample {num_frames} frames from a video of {total}")
  step = total / num_frames
  shift = step / 2 if initial_shift is True else float(initial_shift or 0)
  count = int(np.ceil((total - shift) / step))
  values = (shift + np.arange(count, dtype=np.float64) * step).astype(np.float32)
  return values[values < total].astype(np.int32).astype(int)


class InternVL:
  """InternVL image + video preprocessing from preprocessor_config.json,
  video_preprocessor_config.json and processor_config.json (their dicts)."""

  start, end = "<img>", "</img>"
  image_token, video_token = "<IMG_CONTEXT>", "<video>"

  def __init__(self, image_cfg: Mapping[str, Any], video_cfg: Mapping[str, Any] | None,
               processor_cfg: Mapping[str, Any], *, image_backend: str = "torchvision", max_tiles: int = 0,
               video_fps: float = 0.0, video_num_frames: int = 0):
    ic, vc = dict(image_cfg), dict(video_cfg or {})
    size = ic.get("size") or {"height": 384, "width": 384}
    self.tile = (int(size["height"]), int(size["width"]))
    # transformers' InternVLProcessor asks the image processor to crop to tiles.
    self.crop = bool(processor_cfg.get("crop_to_patches", True))
    self.min_tiles = int(ic.get("min_patches", 1))
    self.max_tiles = max_tiles or int(ic.get("max_patches", 12))
    self.norm = _norm(ic, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    self.resample = int(ic.get("resample", resample.BICUBIC))
    self.torch = image_backend == "torchvision"
    self.seq = int(processor_cfg.get("image_seq_length", 256))
    vsize = vc.get("size") or {"height": 384, "width": 384}
    self.v_tile = (int(vsize["height"]), int(vsize["width"]))
    self.v_norm = _norm(vc, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    self.v_resample = int(vc.get("resample", resample.BICUBIC))
    self.sample = bool(vc.get("do_sample_frames", False)) or bool(video_fps or video_num_frames)
    self.num_frames = video_num_frames or vc.get("num_frames")
    self.fps = None if video_num_frames else (video_fps or vc.get("fps"))
    self.initial_shift = vc.get("initial_shift", True)

  @property
  def patch_shape(self) -> tuple[int, ...]:
    return (3, *self.tile)

  @property
  def image_block(self) -> str:
    """An image in a prompt, as the chat template writes it."""
    return self.image_token + "\n"

  def _resize(self, rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    return (resample.resize_torch if self.torch else resample.resize_pil)(rgb, h, w, self.resample)

  def image(self, rgb: np.ndarray) -> Pixels:
    th, tw = self.tile
    if self.crop and self.max_tiles > 1:
      cols, rows = best_grid(rgb.shape[0], rgb.shape[1], th, tw, self.min_tiles, self.max_tiles)
      big = self._resize(rgb, th * rows, tw * cols)
      tiles = [big[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]
      if len(tiles) > 1:
        tiles.append(self._resize(rgb, th, tw))
    else:
      tiles = [self._resize(rgb, th, tw)]
    x = resample.normalize(np.stack(tiles), *self.norm, torch_style=self.torch)
    return Pixels(x, (len(tiles), 1, 1), self.seq * len(tiles))

  def video(self, path: str) -> Pixels:
    info = media.probe_video(path)
    if self.sample:
      indices = sample_frames(info.total_frames, info.fps, num_frames=self.num_frames, fps=self.fps,
                              initial_shift=self.initial_shift)
    else:
      indices = np.arange(info.total_frames)
    return self.video_frames(media.read_frames(path, indices))

  def video_frames(self, frames: np.ndarray) -> Pixels:
    frames = resample.resize_torch(frames, *self.v_tile, self.v_resample)
    x = resample.normalize(frames, *self.v_norm, torch_style=True)
    return Pixels(x, (len(x), 1, 1), self.seq * len(x))

  def image_text(self, px: Pixels) -> str:
    return f"{self.start}{self.image_token * px.tokens}{self.end}"

  def video_text(self, px: Pixels) -> str:
    frame = f"{self.start}{self.image_token * self.seq}{self.end}"
    return "\n".join(f"Frame{i + 1}: {frame}" for i in range(px.grid[0]))
