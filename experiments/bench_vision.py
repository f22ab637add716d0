"""Vision preprocessing throughput: jaxtrain's torch-free processor vs transformers' PIL image
processors on the same images, and jaxtrain's video path (PyAV decode + sampling + resize +
patches) on its own.

    python experiments/bench_vision.py [--repeats 5] [--skip-transformers]

Images: the synthetic dataset's 64x64 pictures (upscaled to Qwen3-VL's 65,536-pixel minimum),
a 640x480 and a 1280x720 noise image. Times are the best of --repeats per image, on one thread
of whatever the machine gives. transformers' video processors need torchvision, so they are not
timed here (tests/data/vision/hf_oracle.py checks their numbers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _best(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-transformers", action="store_true", help="time jaxtrain only (no transformers import)")
  args = parser.parse_args()

  from PIL import Image

  from jaxtrain.data.vision import synthetic
  from jaxtrain.data.vision.processor import VisionProcessor
  from jaxtrain.data.vision.processor_dirs import write_processor_dir

  tmp = tempfile.mkdtemp()
  rng = np.random.default_rng(0)
  images = {"64x64 synthetic": np.asarray(synthetic.make_image("count", rng, 64)[0]),
            "640x480": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            "1280x720": rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)}
  hf = {}
  try:
    if args.skip_transformers:
      raise ImportError
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    hf = {"qwen3_vl": Qwen2VLImageProcessorPil, "internvl": GotOcr2ImageProcessorPil}
  except ImportError:
    pass
  print("| processor | image | jaxtrain torchvision-exact ms | jaxtrain PIL-exact ms | transformers PIL ms |")
  print("|---|---|---:|---:|---:|")
  for kind in ("qwen3_vl", "internvl"):
    directory = write_processor_dir(os.path.join(tmp, kind), kind, ["what colour"])
    ours = {b: VisionProcessor(directory, image_backend=b) for b in ("torchvision", "pil")}
    theirs = hf[kind].from_pretrained(directory) if kind in hf else None
    kwargs = {"crop_to_patches": True} if kind == "internvl" else {}
    for name, rgb in images.items():
      row = [f"{_best(lambda: ours[b].spec.image(rgb), args.repeats) * 1e3:.1f}" for b in ("torchvision", "pil")]
      pil = Image.fromarray(rgb)
      row.append(f"{_best(lambda: theirs(pil, **kwargs), args.repeats) * 1e3:.1f}" if theirs else "n/a")
      print(f"| {kind} | {name} | " + " | ".join(row) + " |")

  print()
  print("| processor | video | frames sampled | jaxtrain ms (decode + process) |")
  print("|---|---|---:|---:|")
  video = os.path.join(tmp, "clip.mp4")
  import av
  with av.open(video, "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    for t in range(30):
      frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  for kind, kwargs in (("qwen3_vl", {}), ("internvl", {"video_num_frames": 4})):
    proc = VisionProcessor(os.path.join(tmp, kind), **kwargs)
    px = proc.spec.video(video)
    frames = px.grid[0] * (proc.spec.v_temporal if kind == "qwen3_vl" else 1)
    print(f"| {kind} | 320x240, 3 s at 10 fps (h264) | {frames} | "
          f"{_best(lambda: proc.spec.video(video), args.repeats) * 1e3:.1f} |")


if __name__ == "__main__":
  main()
