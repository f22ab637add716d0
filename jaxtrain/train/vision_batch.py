"""The multimodal training batch: what the trainer reads from a data pipeline for a
vision-language model, and how it becomes the fixed-shape arrays the train step takes.

Contract of a pipeline batch (per process, numpy): the text keys of the data contract
(`input_ids`, `target_ids`, `loss_mask`, `segment_ids`, `positions`: int32 `[rows, seq_len]`)
plus, when the step has pictures, the Hugging Face processor's arrays of every image / video in
those rows, concatenated in row-major order of their placeholder tokens:

  pixel_values         float32 [patches, C*t*p*p] (Qwen3-VL) or [tiles, C, S, S] (InternVL)
  image_grid_thw       int     [images, 3]   (Qwen3-VL; rows of zeros are padding)
  pixel_values_videos  float32 [patches, C*t*p*p]   (Qwen3-VL)
  video_grid_thw       int     [videos, 3]

Their lengths may vary from step to step (extra patch rows past the grids are ignored). An
image's placeholder tokens must not cross a document boundary (`segment_ids`), and each row's
patches (tiles) must fit `model.vision.row_capacity` (0: as many as seq_len placeholders
could need). `model_batch` lays them out per row (`models/vision/layout.py`): the train step
then always sees the same shapes, and the vision tower's rows shard like the text rows.
"""

from __future__ import annotations

import numpy as np

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.vision import layout

PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def model_shapes(cfg: ModelConfig, rows: int, seq_len: int) -> dict[str, tuple[tuple[int, ...], type]]:
  """Shape and dtype of each vision input of the train step ({} for a text model)."""
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


def model_batch(cfg: ModelConfig, batch: dict, seq_len: int) -> dict:
  """The pipeline batch with its pixel arrays replaced by the per-row model inputs."""
  out = {k: v for k, v in batch.items() if k not in PIXEL_KEYS}
  if not cfg.vision.enabled:
    return out
  ids = np.asarray(batch["input_ids"])
  cap = layout.default_capacity(cfg.vision, seq_len)
  pixels = {k: batch.get(k) for k in PIXEL_KEYS}
  if cfg.vision.tower == "rope_vit":
    out.update(layout.rope_vit_inputs(cfg.vision, ids, batch["segment_ids"], capacity=cap, **pixels))
  else:
    if pixels["pixel_values_videos"] is not None:
      raise ValueError("the batch has videos, but the cls_vit tower (InternVL) takes images only")
    out.update(layout.cls_vit_inputs(cfg.vision, ids, pixel_values=pixels["pixel_values"], capacity=cap))
  return out
