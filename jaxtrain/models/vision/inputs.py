"""The multimodal training batch: what the trainer takes from a data pipeline for a
vision-language model, and how it becomes the arrays the train step feeds the model.

Two layouts are accepted (per process, numpy), beside the text keys of the data contract
(`input_ids`, `target_ids`, `loss_mask`, `segment_ids`, `positions`: int32 `[rows, seq_len]`):

- per row, as the data pipeline makes them (`jaxtrain/data/vision/batch.py`, docs/architecture.md
  "The multimodal batch contract"): `pixel_values` `[rows, P, *patch]`, `pixel_segment_ids`,
  `vision_grid_thw`, `vision_segment_ids` and, for Qwen3-VL, `mrope_positions`; P and the item
  count are data.vision.max_patches / max_items;
- flat, as the Hugging Face processor returns them for those rows, concatenated in row-major
  order of their placeholder tokens: `pixel_values` `[patches, C*t*p*p]` (Qwen3-VL) or
  `[tiles, C, S, S]` (InternVL), `image_grid_thw` (rows of zeros are padding),
  `pixel_values_videos`, `video_grid_thw`; laid out per row up to `model.vision.row_capacity`
  patches (tiles), 0 = as many as seq_len placeholders could need.

Either way the model gets `models/vision/layout.py`'s per-row inputs (`VISION_KEYS` of
models/vlm.py, plus `rope_positions` for Qwen3-VL), whose shapes stay the same every step.
A batch without pictures gets empty (zero) vision inputs of the flat layout's shapes.
"""

from __future__ import annotations

import numpy as np

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.vision import layout

FLAT_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
ROW_KEYS = ("pixel_values", "pixel_segment_ids", "vision_grid_thw", "vision_segment_ids", "mrope_positions")


def model_batch(cfg: ModelConfig, batch: dict, seq_len: int) -> dict:
  """The pipeline batch with its pixel arrays replaced by the per-row model inputs."""
  out = {k: v for k, v in batch.items() if k not in FLAT_KEYS + ROW_KEYS and not k.startswith("_")}
  v = cfg.vision
  if not v.enabled:
    return out
  ids = np.asarray(batch["input_ids"])
  cap = layout.default_capacity(v, seq_len)
  if "pixel_segment_ids" in batch:  # the data pipeline's per-row layout
    pixels, items = _pad_rows(np.asarray(batch["pixel_values"], np.float32), np.asarray(batch["pixel_segment_ids"]), cap)
    if v.tower == "rope_vit":
      out.update(layout.rope_vit_rows(v, pixels, items, batch["vision_grid_thw"], batch["mrope_positions"]))
    else:
      out["vision_pixels"] = pixels
    return out
  pixels = {k: batch.get(k) for k in FLAT_KEYS}
  if v.tower == "rope_vit":
    out.update(layout.rope_vit_inputs(v, ids, batch["segment_ids"], capacity=cap, **pixels))
  else:
    if pixels["pixel_values_videos"] is not None:
      raise ValueError("the batch has videos, but the cls_vit tower (InternVL) takes images only")
    out.update(layout.cls_vit_inputs(v, ids, pixel_values=pixels["pixel_values"], capacity=cap))
  return out


def model_shapes(cfg: ModelConfig, rows: int, seq_len: int) -> dict[str, tuple[tuple[int, ...], type]]:
  """Shape and dtype of each vision input of the flat layout ({} for a text model)."""
  v = cfg.vision
  if not v.enabled:
    return {}
  cap = layout.default_capacity(v, seq_len)
  if v.tower == "rope_vit":
    return {"vision_patches": ((rows, cap, v.patch_dim), np.float32), "vision_segments": ((rows, cap), np.int32),
            "vision_hw": ((rows, cap, 2), np.int32), "vision_pos_index": ((rows, cap, layout.PAD_TAPS), np.int32),
            "vision_pos_weight": ((rows, cap, layout.PAD_TAPS), np.float32),
            "rope_positions": ((rows, seq_len, 3), np.int32)}
  return {"vision_pixels": ((rows, cap, v.in_channels, v.image_size, v.image_size), np.float32)}


def _pad_rows(pixels: np.ndarray, items: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
  """The per-row patch arrays widened to the model's row capacity (the train step's fixed shape)."""
  P = pixels.shape[1]
  if P > cap:
    raise ValueError(f"the batch holds {P} patch slots per row (data.vision.max_patches), more than the model's "
                     f"{cap} (model.vision.row_capacity; 0 = from data.seq_len): raise row_capacity or lower "
                     f"max_patches")
  if P == cap:
    return pixels, items
  widen = [(0, 0), (0, cap - P)]
  return np.pad(pixels, widen + [(0, 0)] * (pixels.ndim - 2)), np.pad(items, widen)


def input_axes(key: str, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of a vision input: rows (and `rope_positions`' sequence) sharded like the text."""
  lead = ("act_batch", "act_seq") if key == "rope_positions" else ("act_batch",)
  return lead + (None,) * (ndim - len(lead))
