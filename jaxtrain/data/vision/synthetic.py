"""A vision-language dataset the repo makes itself: pictures of coloured shapes and digits drawn
with Pillow and short videos of a moving shape written with PyAV, with questions whose answers
need the pixels (colour, count, position, digit, direction of motion).

    python -m jaxtrain.data.vision.synthetic --out runs/vlm_synth [--train 2000 --heldout 200]

writes
    OUT/media/                       the images (.png) and videos (.mp4, h264)
    OUT/vision_chat/{train,heldout}.jsonl   messages with image / video content items
    OUT/llava/{train,heldout}.jsonl         the same samples, LLaVA layout (<image> / <video>)
    OUT/blank/{train,heldout}.jsonl         the same questions and answers over blank media
    OUT/qwen3_vl/, OUT/internvl/     processor directories (processor_dirs.py) whose tokenizer
                                     is trained on the dataset's text: data.tokenizer of tiny runs
    OUT/dataset.json                 what was generated (generation is skipped when it matches)
Paths inside the JSONL files are relative to them. Every record also has `task` and `answer`
fields, for scoring held-out answers. `ensure(OUT, ...)` does the same from Python (configs call
it, so a run needs no separate step).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

from jaxtrain.data.vision.processor_dirs import KINDS, corpus_from_jsonl, write_processor_dir

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
TASKS = ("colour", "count", "position", "digit", "motion")
BACKGROUND = (235, 235, 235)
VERSION = 1


def _draw_shape(draw, shape: str, box: tuple[float, float, float, float], colour) -> None:
  x0, y0, x1, y1 = box
  if shape == "circle":
    draw.ellipse(box, fill=colour)
  elif shape == "square":
    draw.rectangle(box, fill=colour)
  else:
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _canvas(size: int):
  from PIL import Image, ImageDraw

  image = Image.new("RGB", (size, size), BACKGROUND)
  return image, ImageDraw.Draw(image)


def _boxes(rng: np.random.Generator, size: int, count: int, side: int) -> list[tuple[int, int, int, int]]:
  """`count` non-overlapping boxes on a grid of cells."""
  cells = size // side
  picks = rng.choice(cells * cells, size=count, replace=False)
  return [(int(c % cells * side + 1), int(c // cells * side + 1), int(c % cells * side + side - 2),
           int(c // cells * side + side - 2)) for c in picks]


def make_image(task: str, rng: np.random.Generator, size: int) -> tuple[Any, str, str]:
  """-> (PIL image, question, answer)."""
  from PIL import ImageFont

  image, draw = _canvas(size)
  shape = str(rng.choice(SHAPES))
  colour = str(rng.choice(list(COLOURS)))
  if task == "colour":
    _draw_shape(draw, shape, _boxes(rng, size, 1, size // 2)[0], COLOURS[colour])
    return image, f"What colour is the {shape}?", colour
  if task == "count":
    n = int(rng.integers(1, 6))
    for box in _boxes(rng, size, n, size // 4):
      _draw_shape(draw, shape, box, COLOURS[colour])
    return image, f"How many {shape}s are there?", str(n)
  if task == "position":
    where = str(rng.choice(list(POSITIONS)))
    r, c = POSITIONS[where]
    half = size // 2
    _draw_shape(draw, shape, (c * half + 4, r * half + 4, c * half + half - 5, r * half + half - 5), COLOURS[colour])
    return image, f"Where is the {colour} {shape}?", where
  digit = str(rng.integers(0, 10))
  font = ImageFont.load_default(size=int(size * 0.7))
  draw.text((size / 2, size / 2), digit, fill=COLOURS[colour], font=font, anchor="mm")
  return image, "Which digit is shown?", digit


def write_motion_video(path: str, rng: np.random.Generator, size: int, frames: int, fps: int) -> tuple[str, str]:
  """A shape moving in a straight line -> (question, answer)."""
  import av

  shape = str(rng.choice(SHAPES))
  colour = str(rng.choice(list(COLOURS)))
  direction = str(rng.choice(list(DIRECTIONS)))
  dy, dx = DIRECTIONS[direction]
  side = size // 4
  travel = size - side - 4
  across = int(rng.integers(2, size - side - 2))
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for t in range(frames):
      along = 2 + travel * t // max(frames - 1, 1)
      along = along if (dx + dy) > 0 else size - side - along
      x, y = (along, across) if dx else (across, along)
      image, draw = _canvas(size)
      _draw_shape(draw, shape, (x, y, x + side, y + side), COLOURS[colour])
      frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return f"Which way does the {colour} {shape} move?", direction


def _records(kind: str, media: str, question: str, answer: str, task: str) -> dict[str, dict]:
  """The same sample in both layouts."""
  chat = {"task": task, "answer": answer,
          "messages": [{"role": "user", "content": [{"type": kind, kind: media}, {"type": "text", "text": question}]},
                       {"role": "assistant", "content": answer}]}
  llava = {"task": task, "answer": answer, f"{kind}s": [media],
           "conversations": [{"from": "human", "value": f"<{kind}>\n{question}"}, {"from": "gpt", "value": answer}]}
  return {"vision_chat": chat, "llava": llava}


def generate(out: str, *, train: int = 2000, heldout: int = 200, seed: int = 0, size: int = 64,
             video_frames: int = 8, video_fps: int = 4, video_share: float = 0.2) -> dict[str, str]:
  """Writes the dataset (see the module docstring); returns {layout/split: jsonl path}."""
  media = os.path.join(out, "media")
  os.makedirs(media, exist_ok=True)
  blank_image = os.path.join(media, "blank.png")
  _canvas(size)[0].save(blank_image)
  _write_blank_video(os.path.join(media, "blank.mp4"), size, video_frames, video_fps)
  paths = {}
  for split, count, split_seed in (("train", train, seed), ("heldout", heldout, seed + 1_000_003)):
    rng = np.random.default_rng(split_seed)
    rows: dict[str, list[dict]] = {"vision_chat": [], "llava": [], "blank": []}
    for i in range(count):
      name = f"{split}_{i:05d}"
      if rng.random() < video_share:
        rel = f"media/{name}.mp4"
        question, answer = write_motion_video(os.path.join(out, rel), rng, size, video_frames, video_fps)
        kind, task, blank = "video", "motion", "media/blank.mp4"
      else:
        task = str(rng.choice(TASKS[:4]))
        image, question, answer = make_image(task, rng, size)
        rel = f"media/{name}.png"
        image.save(os.path.join(out, rel))
        kind, blank = "image", "media/blank.png"
      for layout, record in _records(kind, f"../{rel}", question, answer, task).items():
        rows[layout].append(record)
      rows["blank"].append(_records(kind, f"../{blank}", question, answer, task)["vision_chat"])
    for layout, records in rows.items():
      os.makedirs(os.path.join(out, layout), exist_ok=True)
      path = os.path.join(out, layout, f"{split}.jsonl")
      with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      paths[f"{layout}/{split}"] = path
  return paths


def _write_blank_video(path: str, size: int, frames: int, fps: int) -> None:
  import av

  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    blank = np.full((size, size, 3), BACKGROUND, np.uint8)
    for _ in range(frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(blank, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def ensure(out: str, **settings: Any) -> dict[str, str]:
  """Generates the dataset in `out` unless it is already there with the same settings; returns
  {"vision_chat/train": jsonl path, ..., "processor/qwen3_vl": directory, "processor/internvl": ...}."""
  stamp = os.path.join(out, "dataset.json")
  want = {"version": VERSION, **settings}
  processors = {f"processor/{kind}": os.path.join(out, kind) for kind in KINDS}
  if os.path.exists(stamp):
    with open(stamp) as f:
      if json.load(f) == want:
        return {**{f"{layout}/{split}": os.path.join(out, layout, f"{split}.jsonl")
                   for layout in ("vision_chat", "llava", "blank") for split in ("train", "heldout")}, **processors}
  paths = generate(out, **settings)
  corpus = corpus_from_jsonl([paths["vision_chat/train"]])
  for kind in KINDS:
    write_processor_dir(processors[f"processor/{kind}"], kind, corpus)
  with open(stamp, "w") as f:
    json.dump(want, f)
  return {**paths, **processors}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--train", type=int, default=2000, help="training samples")
  parser.add_argument("--heldout", type=int, default=200, help="held-out samples")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--size", type=int, default=64, help="image and video side in pixels (even)")
  parser.add_argument("--video-share", type=float, default=0.2, help="share of samples that are videos")
  args = parser.parse_args(argv)
  if args.size % 2 or args.size < 32:
    parser.error("--size must be even and >= 32 (h264 frames)")
  paths = ensure(args.out, train=args.train, heldout=args.heldout, seed=args.seed, size=args.size,
                 video_share=args.video_share)
  for key, path in sorted(paths.items()):
    if key.startswith("processor/"):
      print(f"{key}: {path}")
      continue
    with open(path) as f:
      print(f"{key}: {sum(1 for _ in f)} samples in {path}")


if __name__ == "__main__":
  main()
