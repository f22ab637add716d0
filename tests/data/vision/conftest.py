"""Local vision-language model directories (tiny tokenizer, the real chat templates and
processor configs of Qwen3-VL and InternVL: jaxtrain.data.vision.processor_dirs) and image /
video files. Nothing is downloaded."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from jaxtrain.data.vision.processor_dirs import write_processor_dir

CORPUS = ["What colour is the square? The square is red.", "How many circles are there? There are 3 circles.",
          "Where is the star? Top left. Which way does the ball move? Left to right.",
          "Describe the picture and the video in one sentence. seconds Frame1: Frame2:"] * 4


def build_vlm_dir(path: pathlib.Path, kind: str) -> str:
  return write_processor_dir(str(path), kind, CORPUS, vocab_size=420)


@pytest.fixture(scope="session")
def qwen_vl_dir(tmp_path_factory) -> str:
  return build_vlm_dir(tmp_path_factory.mktemp("qwen3_vl"), "qwen3_vl")


@pytest.fixture(scope="session")
def internvl_dir(tmp_path_factory) -> str:
  return build_vlm_dir(tmp_path_factory.mktemp("internvl"), "internvl")


def write_image(path: pathlib.Path, height: int, width: int, seed: int = 0, mode: str = "RGB") -> str:
  """Noise plus a gradient (so resampling is exercised everywhere)."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
  img = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
  im = Image.fromarray(img)
  if mode != "RGB":
    im = im.convert(mode)
  im.save(path)
  return str(path)


def write_video(path: pathlib.Path, frames: int, height: int, width: int, fps: int = 10, seed: int = 0,
                codec: str = "libx264") -> str:
  """A moving square over noise, encoded with PyAV (h264/yuv420p by default, as most real videos)."""
  import av

  rng = np.random.default_rng(seed)
  background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if codec in ("png", "rawvideo") else "yuv420p"
    for t in range(frames):
      img = background.copy()
      x0 = (t * 7) % max(width - 16, 1)
      img[height // 3:height // 3 + 16, x0:x0 + 16] = (255, 40, 40)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("media")
  write_image(d / "wide.png", 60, 100, seed=1)
  write_image(d / "tall.jpg", 300, 170, seed=2)
  write_image(d / "big.png", 700, 900, seed=3)
  write_image(d / "gray.png", 64, 48, seed=4, mode="L")
  write_video(d / "clip.mp4", 25, 90, 120, fps=10, seed=5)  # odd frame count after sampling
  write_video(d / "short.mp4", 8, 64, 80, fps=4, seed=6)
  write_video(d / "clip.mkv", 12, 48, 64, fps=6, seed=7, codec="ffv1")  # no frame count in the header
  (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
  return d
