"""Qwen3-VL inputs: smart resize, (temporal, height, width) patches in merge-window order, video
frame sampling with timestamps, placeholder expansion and the language model's 3-D rotary
positions — the numbers transformers' `Qwen2VLImageProcessor`, `Qwen3VLVideoProcessor`,
`Qwen3VLProcessor` and `Qwen3VLModel.get_rope_index` produce.

Images are resized as transformers' torchvision image processor does (what it picks whenever
torchvision is installed) or, with image_backend="pil", as its PIL processor does; videos always
as torchvision does (transformers' video processors exist for torchvision only). See resample.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from jaxtrain.data.vision import media, resample

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize_image(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
  """Both sides a multiple of `factor`, area in [min_pixels, max_pixels], aspect ratio kept."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def smart_resize_video(num_frames: int, height: int, width: int, factor: int, temporal_factor: int, min_pixels: int,
                       max_pixels: int) -> tuple[int, int]:
  """Qwen3-VL's video variant: the pixel budget counts frames (rounded to the temporal patch)."""
  if num_frames < temporal_factor:
    raise ValueError(f"{num_frames} frames: a video needs at least temporal_patch_size={temporal_factor}")
  if height < factor or width < factor:
    scale = max(factor / height, factor / width)
    height, width = int(height * scale), int(width * scale)
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  t_bar = round(num_frames / temporal_factor) * temporal_factor
  if t_bar * h_bar * w_bar > max_pixels:
    beta = math.sqrt(num_frames * height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif t_bar * h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (num_frames * height * width))
    h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def patchify(frames: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, tuple[int, int, int]]:
  """float32 [T, C, H, W] -> ([grid_t * grid_h * grid_w, C * temporal * patch * patch], grid).

  The frame count is padded to a multiple of `temporal` by repeating the last frame; patches are
  ordered by (t, merge-window row, merge-window column, row in window, column in window)."""
  if pad := -len(frames) % temporal:
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
  t, c, h, w = frames.shape
  gt, gh, gw = t // temporal, h // patch, w // patch
  x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return np.ascontiguousarray(x.reshape(gt * gh * gw, c * temporal * patch * patch)), (gt, gh, gw)


def sample_frames(total: int, video_fps: float, *, fps: float | None, num_frames: int | None, min_frames: int,
                  max_frames: int) -> np.ndarray:
  """Qwen3-VL: `fps` frames per second (or `num_frames`), within [min_frames, max_frames] and the
  video's length, spread evenly from the first to the last frame."""
  if fps is not None and num_frames is not None:
    raise ValueError("video sampling: give fps or num_frames, not both")
  if num_frames is None and fps is not None:
    num_frames = int(total / video_fps * fps)
    num_frames = min(max(num_frames, min_frames), max_frames, total)
  if num_frames is None:
    num_frames = min(max(total, min_frames), max_frames)
  return np.linspace(0, total - 1, num_frames).round().astype(int)


def frame_timestamps(indices: np.ndarray, video_fps: float, temporal: int) -> list[float]:
  """Seconds of each temporal patch: the mean of its first and last frame's time."""
  idx = [int(i) for i in indices]
  if len(idx) % temporal:
    idx += [idx[-1]] * (temporal - len(idx) % temporal)
  times = [i / video_fps for i in idx]
  return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


def _size(cfg: Mapping[str, Any], default: tuple[int, int]) -> tuple[int, int]:
  size = dict(cfg.get("size") or {})
  lo = cfg.get("min_pixels", size.get("shortest_edge", default[0]))
  hi = cfg.get("max_pixels", size.get("longest_edge", default[1]))
  return int(lo), int(hi)


@dataclasses.dataclass
class Pixels:
  """One image's or video's processor output."""
  patches: np.ndarray  # float32 [n, patch_dim]
  grid: tuple[int, int, int]
  tokens: int  # placeholder tokens in the text
  timestamps: list[float] | None = None  # videos: seconds per temporal patch


class QwenVL:
  """Qwen3-VL image + video preprocessing from preprocessor_config.json and
  video_preprocessor_config.json (their dicts), with the same defaults as transformers' classes."""

  image_token, video_token = "<|image_pad|>", "<|video_pad|>"
  vision_start, vision_end = "<|vision_start|>", "<|vision_end|>"

  def __init__(self, image_cfg: Mapping[str, Any], video_cfg: Mapping[str, Any], *, image_backend: str = "torchvision",
               image_max_pixels: int = 0, video_max_pixels: int = 0, video_fps: float = 0.0,
               video_num_frames: int = 0):
    ic, vc = dict(image_cfg), dict(video_cfg or image_cfg)
    self.patch = int(ic.get("patch_size", 14))
    self.temporal = int(ic.get("temporal_patch_size", 2))
    self.merge = int(ic.get("merge_size", 2))
    self.image_min, self.image_max = _size(ic, (56 * 56, 28 * 28 * 1280))
    self.image_max = image_max_pixels or self.image_max
    self.image_norm = _norm(ic, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    self.image_resample = int(ic.get("resample", resample.BICUBIC))
    self.image_resize = bool(ic.get("do_resize", True))
    self.image_torch = image_backend == "torchvision"
    self.v_patch = int(vc.get("patch_size", 16))
    self.v_temporal = int(vc.get("temporal_patch_size", 2))
    self.v_merge = int(vc.get("merge_size", 2))
    self.video_min, self.video_max = _size(vc, (128 * 32 * 32, 32 * 32 * 768))
    self.video_max = video_max_pixels or self.video_max
    self.video_norm = _norm(vc, IMAGENET_STANDARD, IMAGENET_STANDARD)
    self.video_resample = int(vc.get("resample", resample.BICUBIC))
    self.video_resize = bool(vc.get("do_resize", True))
    self.fps = video_fps or vc.get("fps", 2)
    self.num_frames = video_num_frames or vc.get("num_frames")
    if video_num_frames:
      self.fps = None
    self.sample = bool(vc.get("do_sample_frames", True))
    self.min_frames, self.max_frames = int(vc.get("min_frames", 4)), int(vc.get("max_frames", 768))
    self.cap_per_frame = bool(vc.get("cap_pixels_per_frame") or False)
    self.max_video_tokens = int(vc.get("max_video_tokens", 768))

  @property
  def patch_shape(self) -> tuple[int, ...]:
    return (3 * self.temporal * self.patch * self.patch,)

  @property
  def image_block(self) -> str:
    """An image in a prompt, as the chat template writes it."""
    return self.vision_start + self.image_token + self.vision_end

  def image(self, rgb: np.ndarray) -> Pixels:
    factor = self.patch * self.merge
    if self.image_resize:
      h, w = smart_resize_image(rgb.shape[0], rgb.shape[1], factor, self.image_min, self.image_max)
      resize = resample.resize_torch if self.image_torch else resample.resize_pil
      rgb = resize(rgb, h, w, self.image_resample)
    x = resample.normalize(rgb, *self.image_norm, torch_style=self.image_torch)
    patches, (_, gh, gw) = patchify(np.repeat(x[None], self.temporal, axis=0), self.patch, self.merge, self.temporal)
    return Pixels(patches, (1, gh, gw), gh * gw // self.merge**2)

  def video(self, path: str) -> Pixels:
    info = media.probe_video(path)
    if self.sample:
      indices = sample_frames(info.total_frames, info.fps, fps=self.fps, num_frames=self.num_frames,
                              min_frames=self.min_frames, max_frames=self.max_frames)
    else:
      indices = np.arange(info.total_frames)
    frames = media.read_frames(path, indices)
    return self.video_frames(frames, indices, info.fps)

  def video_frames(self, frames: np.ndarray, indices: np.ndarray, video_fps: float) -> Pixels:
    """uint8 [T, H, W, 3] sampled frames (their indices in the video) -> patches and timestamps."""
    factor = self.v_patch * self.v_merge
    if self.video_resize:
      max_pixels = self.video_max
      if self.cap_per_frame:
        per_frame = max(min(self.max_video_tokens * factor * factor, self.video_max // len(frames)),
                        int(self.video_min * 1.05))
        max_pixels = per_frame * len(frames)
      h, w = smart_resize_video(len(frames), frames.shape[1], frames.shape[2], factor, self.v_temporal,
                                self.video_min, max_pixels)
      frames = resample.resize_torch(frames, h, w, self.video_resample)
    x = resample.normalize(frames, *self.video_norm, torch_style=True)
    patches, grid = patchify(x, self.v_patch, self.v_merge, self.v_temporal)
    stamps = frame_timestamps(indices, video_fps, self.v_temporal)
    return Pixels(patches, grid, grid[0] * grid[1] * grid[2] // self.v_merge**2, stamps)

  def image_text(self, px: Pixels) -> str:
    return self.image_token * px.tokens

  def video_text(self, px: Pixels) -> str:
    per_frame = px.grid[1] * px.grid[2] // self.v_merge**2
    return "".join(f"<{px.timestamps[t]:.1f} seconds>{self.vision_start}{self.video_token * per_frame}{self.vision_end}"
                   for t in range(px.grid[0]))


def _norm(cfg: Mapping[str, Any], mean, std) -> tuple[float | None, Any, Any]:
  rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None
  if not cfg.get("do_normalize", True):
    return rescale, None, None
  return rescale, cfg.get("image_mean", mean), cfg.get("image_std", std)


def rope_positions(types: np.ndarray, items: list[tuple[int, tuple[int, int, int]]], merge: int) -> np.ndarray:
  """int32 [3, n]: Qwen3-VL's (temporal, height, width) positions of one document's tokens.

  `types` marks each token: 0 text, 1 image, 2 video placeholder; `items` lists the vision
  items in order as (type, grid_thw). Text advances all three by one per token; a vision group (an image, or one
  temporal patch of a video: timestamps separate them) takes t = start, h = start + row,
  w = start + column, then positions resume at start + max(rows, columns)."""
  out = np.zeros((3, len(types)), np.int32)
  frames = []
  for kind, (t, h, w) in items:
    frames += [(h, w)] * (t if kind == 2 else 1)
  frames_iter = iter(frames)
  pos = 0
  i = 0
  n = len(types)
  while i < n:
    j = i
    while j < n and types[j] == types[i]:
      j += 1
    if types[i] == 0:
      out[:, i:j] = pos + np.arange(j - i)
      pos += j - i
    else:
      h, w = next(frames_iter)
      gh, gw = h // merge, w // merge
      if gh * gw != j - i:
        raise ValueError(f"a vision group of {j - i} tokens does not match its grid {h}x{w} (merge {merge})")
      rows, cols = np.divmod(np.arange(gh * gw), gw)
      out[0, i:j] = pos
      out[1, i:j] = pos + rows
      out[2, i:j] = pos + cols
      pos += max(gh, gw)
    i = j
  return out
