"""Multimodal documents as packable pieces, and the features every piece of a vision run carries.

A piece of a vision run holds, besides `tokens` [n, 3]:
- `patches` int32 [p]: for each pixel patch (InternVL: tile) of the document, which of its vision
  items (1-based, in placeholder order) it belongs to;
- `items` int32 [k, 3]: each vision item's grid (t, h, w) in patches (InternVL: (1, 1, 1) per tile);
- `mrope` int32 [n, 3] (Qwen3-VL): the language model's (temporal, height, width) positions;
- in `meta["pixels"]`, the float32 pixel patches [p, *patch_shape] (they travel beside the packed
  features, so the packer does not hold a pixel buffer per bin).
Text pieces of the same run carry empty patches / items and text positions. The packer packs
`patches` and `items` against their own row capacities (data.vision.max_patches / max_items), so
the pixels of a row always fit the fixed-size batch arrays.

A multimodal document is never split: one longer than seq_len is truncated when every vision
token lies before the cut (data.overlong=truncate or split), else dropped and counted
(dropped_overlong), or an error with data.overlong=error.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxtrain.data import chat
from jaxtrain.data.errors import BadRecord, DataError
from jaxtrain.data.packing import empty_piece
from jaxtrain.data.vision.media import MediaError
from jaxtrain.data.vision.processor import VisionProcessor
from jaxtrain.data.vision.records import record_messages


class VisionPieces:
  """Builds the pieces of a vision run (a Grain transform's helper; picklable)."""

  def __init__(self, processor: VisionProcessor, *, seq_len: int, max_patches: int, max_items: int):
    self.processor = processor
    self.seq_len = seq_len
    self.rope = processor.kind == "qwen3_vl"
    self.patch_shape = processor.patch_shape
    self.max_patches = max_patches or default_max_patches(processor, seq_len)
    self.max_items = max_items

  def lengths(self) -> dict[str, int]:
    """Packing capacities per row, beside tokens: seq_len."""
    out = {"patches": self.max_patches, "items": self.max_items}
    if self.rope:
      out["mrope"] = self.seq_len
    return out

  def complete(self, piece: dict) -> dict:
    """Gives a text (or empty) piece the vision features."""
    if "patches" not in piece:
      n = len(piece["tokens"])
      piece["patches"] = np.zeros(0, np.int32)
      piece["items"] = np.zeros((0, 3), np.int32)
      if self.rope:
        piece["mrope"] = np.repeat(np.arange(n, dtype=np.int32)[:, None], 3, axis=1)
    return piece

  def document(self, record: dict, fmt: str, entry: dict, file: str, meta: dict, *, loss_on: str, overlong: str,
               where: str) -> list[dict]:
    """One record -> its pieces (raises BadRecord for a malformed record or unusable media)."""
    messages = record_messages(record, fmt, entry, loss_on)
    tools = record.get(entry.get("tools_field", "tools"))
    try:
      enc = self.processor.encode(messages, base_dir=os.path.dirname(os.path.abspath(file)), loss_on=loss_on,
                                  tools=tools if isinstance(tools, list) else None)
    except MediaError as e:
      raise BadRecord("bad_media", str(e)) from None
    except chat.TemplateError as e:
      raise BadRecord("template_error", str(e)) from None
    except ValueError as e:
      raise BadRecord("placeholder_mismatch", str(e)) from None
    n = len(enc.ids)
    if n == 0 or not enc.learn[1:].any():
      return [empty_piece(dict(meta, doc=0, empty=1))]
    rows = np.empty((n, 3), np.int32)
    rows[:, 0] = enc.ids
    rows[:-1, 1] = enc.ids[1:]
    rows[-1, 1] = self.processor.tokenizer.pad_id
    rows[:-1, 2] = enc.learn[1:]
    rows[-1, 2] = 0
    keep = n
    if n > self.seq_len:
      if overlong == "error":
        raise DataError(f"{where}: {n} tokens > data.seq_len={self.seq_len} (data.overlong=error; multimodal "
                        "documents are never split: raise data.seq_len or use truncate / drop)")
      last_vision = np.flatnonzero(enc.types)[-1] if enc.types.any() else -1
      if overlong == "drop" or last_vision >= self.seq_len - 1 or not rows[:self.seq_len, 2].any():
        return [empty_piece(dict(meta, doc=0, drop=1))]
      keep = self.seq_len
      meta = dict(meta, trunc=n - keep)
    patches = [it.pixels.patches for it in enc.items]
    count = sum(len(p) for p in patches)
    if count > self.max_patches:
      raise BadRecord("too_many_pixels", f"{count} pixel patches > data.vision.max_patches={self.max_patches} "
                      "(shrink images with data.vision.image_max_pixels / video_max_pixels, or raise the cap)")
    if len(enc.items) > self.max_items:
      raise BadRecord("too_many_pixels", f"{len(enc.items)} vision items > data.vision.max_items={self.max_items}")
    piece = {"tokens": rows[:keep],
             "patches": np.concatenate([np.full(len(p), i + 1, np.int32) for i, p in enumerate(patches)]
                                       or [np.zeros(0, np.int32)]),
             "items": np.array([it.pixels.grid for it in enc.items], np.int32).reshape(-1, 3),
             "meta": dict(meta, pixels=np.concatenate(patches) if patches else None,
                          images=sum(it.kind == 1 for it in enc.items), videos=sum(it.kind == 2 for it in enc.items))}
    if self.processor.kind == "internvl":  # every tile is one item of the vision tower
      piece["items"] = np.ones((count, 3), np.int32)
      piece["patches"] = np.arange(1, count + 1, dtype=np.int32)
      if count > self.max_items:
        raise BadRecord("too_many_pixels", f"{count} tiles > data.vision.max_items={self.max_items}")
    if self.rope:
      piece["mrope"] = np.ascontiguousarray(enc.rope.T[:keep])
    return [piece]


def default_max_patches(processor: VisionProcessor, seq_len: int) -> int:
  """The most pixel patches (tiles) a row of seq_len tokens can need."""
  if processor.kind == "qwen3_vl":
    return seq_len * max(processor.spec.merge, processor.spec.v_merge) ** 2
  return max(1, seq_len // processor.spec.seq)


def build_vision(config: Any, tokenizer: Any) -> VisionPieces | None:
  """The run's VisionPieces when a source has a multimodal format, else None."""
  from jaxtrain.data.config import VISION_FORMATS

  d = config.data
  if not any(s.format in VISION_FORMATS for s in d.sources.values()):
    return None
  v = d.vision
  directory = v.processor or d.tokenizer
  try:
    processor = VisionProcessor(directory, tokenizer=tokenizer, image_backend=v.image_backend, image_max_pixels=v.image_max_pixels,
                                video_max_pixels=v.video_max_pixels, max_tiles=v.max_tiles,
                                video_fps=v.video_fps, video_num_frames=v.video_num_frames)
  except (ValueError, FileNotFoundError) as e:
    from jaxtrain.config import ConfigError
    raise ConfigError(f"config data.vision.processor: {e}") from None
  return VisionPieces(processor, seq_len=d.seq_len, max_patches=v.max_patches, max_items=v.max_items)
