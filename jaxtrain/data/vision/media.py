"""Reading images (Pillow) and videos (PyAV) into uint8 RGB arrays, as transformers reads them.

Images: opened, EXIF orientation applied, converted to RGB (transformers' `load_image`).
Videos: the stream's frame count and average frame rate from the container (as transformers'
PyAV reader), then the requested frames decoded in order and converted to rgb24. Containers
that do not record a frame count (Matroska, WebM) are counted by demuxing.

Any file that is missing, unreadable or not decodable raises `MediaError` naming the file; the
data pipeline turns it into a bad record (the JSONL line is named, or the record is skipped and
counted with data.on_bad_record=skip).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

DEFAULT_VIDEO_FPS = 24.0  # transformers' assumption when a video does not say


class MediaError(ValueError):
  """An image or video file cannot be used; the message names the file."""


def load_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB."""
  from PIL import Image, ImageOps

  if not os.path.isfile(path):
    raise MediaError(f"{path}: image file not found")
  try:
    with Image.open(path) as img:
      img.load()
      img = ImageOps.exif_transpose(img)
      return np.asarray(img.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise MediaError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


@dataclasses.dataclass
class VideoInfo:
  path: str
  total_frames: int
  fps: float
  height: int
  width: int


def _open(path: str):
  import av

  if not os.path.isfile(path):
    raise MediaError(f"{path}: video file not found")
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise MediaError(f"{path}: cannot open video ({type(e).__name__}: {e})") from None
  if not container.streams.video:
    container.close()
    raise MediaError(f"{path}: no video stream")
  return container


def probe_video(path: str) -> VideoInfo:
  import av

  container = _open(path)
  try:
    stream = container.streams.video[0]
    total = int(stream.frames or 0)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else DEFAULT_VIDEO_FPS
    if total <= 0:
      total = sum(1 for packet in container.demux(stream) if packet.size)
    height, width = int(stream.height), int(stream.width)
  except av.FFmpegError as e:
    raise MediaError(f"{path}: cannot read video ({type(e).__name__}: {e})") from None
  finally:
    container.close()
  if total <= 0 or height <= 0 or width <= 0:
    raise MediaError(f"{path}: video has no frames")
  return VideoInfo(path, total, fps, height, width)


def read_frames(path: str, indices: Sequence[int]) -> np.ndarray:
  """uint8 [len(indices), H, W, 3]: the frames at `indices` (0-based decode order; repeats allowed)."""
  import av

  wanted = {int(i) for i in indices}
  last = max(wanted)
  found: dict[int, np.ndarray] = {}
  container = _open(path)
  try:
    for i, frame in enumerate(container.decode(video=0)):
      if i in wanted:
        found[i] = frame.to_ndarray(format="rgb24")
      if i >= last:
        break
  except av.FFmpegError as e:
    raise MediaError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
  finally:
    container.close()
  missing = sorted(wanted - set(found))
  if missing:
    raise MediaError(f"{path}: video ended before frame {missing[0]} ({len(found)} of {len(wanted)} frames decoded)")
  return np.stack([found[int(i)] for i in indices])
