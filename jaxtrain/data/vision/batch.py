"""Packed rows of a vision run -> the multimodal batch contract.

The text keys are those of every pipeline (packing.BatchAssembler). Added, with fixed shapes so
the train step never recompiles (P = data.vision.max_patches, I = data.vision.max_items, per row):

- `pixel_values` float32 [B, P, *patch_shape]: the row's pixel patches in the order their
  placeholder tokens appear (Qwen3-VL: [C * temporal * 16 * 16] per patch, images and video
  patches alike; InternVL: [3, 448, 448] tiles); zeros past the row's patches.
- `pixel_segment_ids` int32 [B, P]: which vision item of the row (1-based) a patch belongs to;
  0 = padding. The vision tower attends only within an item (Qwen3-VL: within each temporal
  patch of it, i.e. per frame pair, as transformers' cu_seqlens do).
- `vision_grid_thw` int32 [B, I, 3]: each item's (t, h, w) grid in patches (InternVL: one item
  per tile, (1, 1, 1)); zeros for padding items.
- `vision_segment_ids` int32 [B, I]: the document (segment id of segment_ids) each item belongs
  to; 0 = padding.
- Qwen3-VL only: `mrope_positions` int32 [B, 3, T]: the language model's (temporal, height,
  width) rotary positions, as transformers' get_rope_index gives per document (restarting at
  each document); 0 on padding.

The k-th vision placeholder token of a row (`<|image_pad|>` / `<|video_pad|>`, InternVL
`<IMG_CONTEXT>`) takes the k-th feature the projector makes from the row's items, in order
(Qwen3-VL: one per merge x merge patches; InternVL: image_seq_length per tile).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxtrain.data.packing import BatchAssembler

VISION_KEYS = ("pixel_values", "pixel_segment_ids", "vision_grid_thw", "vision_segment_ids", "mrope_positions")


class VisionBatchAssembler(BatchAssembler):

  def __init__(self, batch_size: int, seq_len: int, pad_id: int, *, max_patches: int, max_items: int,
               patch_shape: tuple[int, ...], rope: bool):
    super().__init__(batch_size, seq_len, pad_id)
    self.max_patches, self.max_items, self.patch_shape, self.rope = max_patches, max_items, patch_shape, rope

  def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
    batch = super().__call__(rows)
    b, p, i = self.batch_size, self.max_patches, self.max_items
    pixels = np.zeros((b, p, *self.patch_shape), np.float32)
    pixel_items = np.zeros((b, p), np.int32)
    grids = np.zeros((b, i, 3), np.int32)
    item_docs = np.zeros((b, i), np.int32)
    rope = np.zeros((b, 3, self.seq_len), np.int32)
    images = videos = 0
    for r, row in enumerate(rows):
      # Grain's segment ids -> the renumbered ones of segment_ids.
      grain_seg, seg = row["tokens_segment_ids"], batch["segment_ids"][r]
      renumber = dict(zip(grain_seg[seg > 0].tolist(), seg[seg > 0].tolist()))
      item_seg = row["items_segment_ids"]
      grids[r] = row["items"]
      item_docs[r] = [renumber.get(s, 0) for s in item_seg.tolist()]
      patch_seg = row["patches_segment_ids"]
      for j, meta in enumerate(row["meta"]):
        if meta.get("pixels") is None:
          continue
        slots = np.flatnonzero(patch_seg == j + 1)
        pixels[r, slots] = meta["pixels"]
        first_item = int(np.flatnonzero(item_seg == j + 1)[0])
        pixel_items[r, slots] = first_item + row["patches"][slots]
        images += meta.get("images", 0)
        videos += meta.get("videos", 0)
      if self.rope:
        rope[r] = np.where(seg > 0, row["mrope"].T, 0)
    batch.update(pixel_values=pixels, pixel_segment_ids=pixel_items, vision_grid_thw=grids,
                 vision_segment_ids=item_docs)
    if self.rope:
      batch["mrope_positions"] = rope
    stats = batch["_stats"]
    stats.update(images=images, videos=videos, vision_items=int((item_docs > 0).sum()),
                 patches=int((pixel_items > 0).sum()), patch_slots=b * p)
    return batch
