"""Vision-language oracles: tiny `transformers` Qwen3-VL / Qwen3-VL-MoE / InternVL models built
locally from the registered families' example configs with random weights (nothing is
downloaded), and their inputs made the way the Hugging Face processors make them: images
through transformers' own (Pillow) image processors, placeholder tokens laid out as the
processors lay them out (Qwen3-VL: <vision_start> <image_pad> x n <vision_end>, and per video
frame a timestamp then the frame's placeholders; InternVL: <img> <IMG_CONTEXT> x 4 per tile
</img>). Video pixels follow transformers' Qwen3-VL video processor layout (its frame padding
and patch order); that processor itself needs torchvision, whose wheels do not load against the
CPU torch build used here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from tests.converters.conftest import randomize  # noqa: E402

from jaxtrain.converters.families import FAMILIES  # noqa: E402

VOCAB = 101
IMAGE, VIDEO, START, END = 97, 98, 99, 100  # Qwen3-VL examples' special tokens
IVL_IMAGE, IVL_START, IVL_END = 100, 98, 99  # InternVL example: <IMG_CONTEXT>, <img>, </img>
PATCH, MERGE, TEMPORAL = 4, 2, 2


def example(family: str, **changes) -> dict:
  cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in FAMILIES[family].example.items()}
  cfg["text_config"] = {**cfg["text_config"], "vocab_size": VOCAB}
  for key, value in changes.items():
    cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
  return cfg


def build_hf_vlm(family: str, directory: str | None = None, seed: int = 0, **changes):
  """A random transformers model of `family` (eval mode, fp32), saved to `directory`."""
  cfg = transformers.AutoConfig.for_model(family, **example(family, **changes))
  torch.manual_seed(seed)
  model = transformers.AutoModelForImageTextToText.from_config(cfg, attn_implementation="eager").eval()
  randomize(model, seed)
  if cfg.tie_word_embeddings:
    model.tie_weights()
  if directory:
    model.save_pretrained(directory)
  return model


def picture(h: int, w: int, seed: int):
  return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def qwen_images(sizes, seed: int = 0) -> dict:
  """pixel_values / image_grid_thw from transformers' Qwen2-VL (Pillow) image processor."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
  proc = Qwen2VLImageProcessorPil(patch_size=PATCH, temporal_patch_size=TEMPORAL, merge_size=MERGE,
                                  size={"shortest_edge": 8 * 8, "longest_edge": 48 * 48},
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
  out = proc(images=[picture(h, w, seed + i) for i, (h, w) in enumerate(sizes)], return_tensors="np")
  return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def qwen_videos(shapes, seed: int = 0) -> dict:
  """pixel_values_videos / video_grid_thw laid out as transformers' Qwen3-VL video processor
  lays them out (frames rescaled and normalised with mean = std = 0.5, the last frame repeated
  up to a multiple of the temporal patch, patches in merge-window order), for videos of
  `shapes` (frames, height, width) already at sizes the processor would not resize."""
  pixels, grids = [], []
  for i, (frames, h, w) in enumerate(shapes):
    x = np.random.default_rng(seed + 100 + i).integers(0, 256, (frames, h, w, 3)).astype(np.float32)
    x = ((x / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2)  # [F, C, H, W]
    if pad := -frames % TEMPORAL:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    gt, gh, gw = x.shape[0] // TEMPORAL, h // PATCH, w // PATCH
    x = x.reshape(gt, TEMPORAL, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    pixels.append(x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 3 * TEMPORAL * PATCH * PATCH))
    grids.append([gt, gh, gw])
  return {"pixel_values_videos": np.concatenate(pixels), "video_grid_thw": np.asarray(grids, np.int64)}


def qwen_row(items, rng) -> list[int]:
  """Text around the placeholders of `items`: ("image", grid) or ("video", grid)."""
  ids = list(rng.integers(0, 90, 3))
  for kind, (t, h, w) in items:
    if kind == "image":
      ids += [START] + [IMAGE] * (t * h * w // MERGE ** 2) + [END]
    else:
      for _ in range(t):  # "<t seconds>" text, then the frame
        ids += list(rng.integers(0, 90, 2)) + [START] + [VIDEO] * (h * w // MERGE ** 2) + [END]
    ids += list(rng.integers(0, 90, 2))
  return ids + list(rng.integers(0, 90, 3))


LENGTH = 112  # every case is padded to this many tokens and two rows: one compiled program per model


def batch(rows: list[list[int]], length: int = LENGTH) -> dict:
  """Right-padded input_ids with attention_mask and mm_token_type_ids (1 image, 2 video); a
  text-only row is added to reach two rows."""
  if len(rows) == 1:
    rows = rows + [list(range(1, 12))]
  T = max([len(r) for r in rows] + [length])
  ids = np.zeros((len(rows), T), np.int64)
  mask = np.zeros((len(rows), T), np.int64)
  for b, r in enumerate(rows):
    ids[b, :len(r)], mask[b, :len(r)] = r, 1
  types = np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0)) * mask
  return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}


def qwen_case(name: str, seed: int = 0) -> dict:
  """The processor arrays of one named input kind (several rows; odd sizes throughout)."""
  rng = np.random.default_rng(seed)
  images, videos, rows = {}, {}, []
  # Sizes keep each row under 128 patches (one capacity bucket for every case).
  if name == "image":  # one non-square image
    images = qwen_images([(32, 40)], seed)
    rows = [qwen_row([("image", images["image_grid_thw"][0])], rng)]
  elif name == "multi_image":  # images of different sizes in one row and across rows
    images = qwen_images([(24, 40), (16, 16), (40, 24)], seed)
    g = images["image_grid_thw"]
    rows = [qwen_row([("image", g[0]), ("image", g[1])], rng), qwen_row([("image", g[2])], rng)]
  elif name == "video":  # 5 frames: not a multiple of the temporal patch
    videos = qwen_videos([(5, 16, 24)], seed)
    rows = [qwen_row([("video", videos["video_grid_thw"][0])], rng)]
  elif name == "mixed":  # image and video in one row, text only in another
    images, videos = qwen_images([(24, 32)], seed), qwen_videos([(3, 16, 16)], seed)
    rows = [qwen_row([("image", images["image_grid_thw"][0]), ("video", videos["video_grid_thw"][0])], rng),
            list(rng.integers(0, 90, 9))]
  else:
    raise ValueError(name)
  return {**batch(rows), **images, **videos}


def intern_tiles(sizes, image_size: int = 16, seed: int = 0):
  """pixel_values [tiles, 3, S, S] and tiles per image from transformers' GotOcr2 (Pillow)
  image processor with dynamic tiling and a thumbnail tile, as InternVL's processor does."""
  from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
  proc = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=4,
                                  size={"height": image_size, "width": image_size})
  out = proc(images=[picture(h, w, seed + i) for i, (h, w) in enumerate(sizes)], return_tensors="np")
  return out["pixel_values"], [int(n) for n in out["num_patches"]]


def intern_case(name: str, seed: int = 0, tokens_per_tile: int = 4, image_size: int = 16) -> dict:
  """InternVL inputs: images tiled by the processor (a thumbnail tile when there are several);
  a video is its frames, one tile each, each after a "Frame i:" text as InternVL's processor
  writes it. Every row stays within 4 tiles (one capacity bucket for every case)."""
  rng = np.random.default_rng(seed)
  text = lambda n: list(rng.integers(0, 90, n))  # noqa: E731
  block = lambda tiles: [IVL_START] + [IVL_IMAGE] * (tiles * tokens_per_tile) + [IVL_END]  # noqa: E731
  if name in ("image", "multi_image"):
    sizes = {"image": [(20, 40)], "multi_image": [(20, 40), (16, 16), (48, 16)]}[name]
    pixels, tiles = intern_tiles(sizes, image_size=image_size, seed=seed)
    if name == "image":
      rows = [text(3) + block(tiles[0]) + text(4)]
    else:
      rows = [text(2) + block(tiles[0]) + text(2) + block(tiles[1]) + text(3), text(5) + block(tiles[2]) + text(1)]
  else:  # video: 3 frames; mixed: an image (3 tiles) and a 1-frame video in one row, text in the other
    frames = [picture(image_size, image_size, seed + 50 + i) for i in range(3 if name == "video" else 1)]
    images = [picture(20, 40, seed)] if name == "mixed" else []
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    proc = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=4,
                                    size={"height": image_size, "width": image_size})
    parts = [proc(images=images, return_tensors="np")] if images else []
    parts.append(proc(images=frames, crop_to_patches=False, return_tensors="np"))
    pixels = np.concatenate([p["pixel_values"] for p in parts])
    row = text(2)
    if images:
      row += block(int(parts[0]["num_patches"][0])) + text(2)
    for i in range(len(frames)):
      row += text(2) + block(1)  # "Frame{i}: " then the frame
    rows = [row + text(3)]
  out = batch(rows)
  out["mm_token_type_ids"] = (out["input_ids"] == IVL_IMAGE).astype(np.int64)
  return {**out, "pixel_values": pixels}


def hf_logits(model, inputs: dict) -> np.ndarray:
  args = {k: torch.tensor(v) for k, v in inputs.items()}
  if "internvl" in type(model).__name__.lower():
    args.pop("mm_token_type_ids", None)
  with torch.no_grad():
    return model(**args).logits.numpy()


def replace(cfg, **changes):
  return dataclasses.replace(cfg, **changes)
