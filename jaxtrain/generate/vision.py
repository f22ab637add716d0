"""Prompts with pictures for the sampler: token ids (placeholders already expanded, as the
vision processor writes them) with the processor's pixel arrays for those placeholders.

The sampler lays a batch of them out as training does: the flat processor arrays of the rows,
concatenated in row order, go through the model's host-side layout (`model.prepare`, i.e.
`models/vision/layout.py`) into the fixed-shape per-row vision inputs (and, for Qwen3-VL, the
multimodal positions of the left-padded prompts) that the prefill feeds the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclasses.dataclass(frozen=True)
class VisionPrompt:
  """One prompt: `ids` with the processor's arrays for its image / video placeholders
  (`pixel_values`, `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`: those it has)."""
  ids: list[int]
  pixels: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.ids)

  @classmethod
  def from_processor(cls, out: dict) -> "VisionPrompt":
    """From `VisionProcessor.apply_chat_template` / `Encoded` arrays of one conversation."""
    return cls([int(t) for t in np.asarray(out["input_ids"]).reshape(-1)],
               {k: np.asarray(out[k]) for k in PIXEL_KEYS if out.get(k) is not None})


def prompt_ids(prompt: Any) -> list[int]:
  return list(prompt.ids) if isinstance(prompt, VisionPrompt) else list(prompt)


def has_pictures(prompts: Sequence[Any]) -> bool:
  return any(isinstance(p, VisionPrompt) and p.pixels for p in prompts)


def batch_inputs(model: Any, tokens: np.ndarray, start: np.ndarray, prompts: Sequence[Any]) -> dict:
  """The vision inputs of a left-padded batch `tokens` `[B, P]` (row i's prompt from `start[i]`;
  rows past the prompts are padding): `model.prepare`'s per-row arrays, with capacity
  model.vision.row_capacity (0 = bucketed to the batch's need). {} for a batch without pictures."""
  if not has_pictures(prompts):
    return {}
  cfg = getattr(model, "cfg", None)
  if cfg is None or not cfg.vision.enabled or not hasattr(model, "prepare"):
    raise ValueError("prompts with images or videos need a vision-language model (model.vision.tower is 'none'), "
                     "given to the Sampler as a model (not a graphdef)")
  flat: dict[str, list[np.ndarray]] = {k: [] for k in PIXEL_KEYS}
  for p in prompts:
    if isinstance(p, VisionPrompt):
      for k, v in p.pixels.items():
        flat[k].append(np.asarray(v))
  arrays = {k: np.concatenate(v) if v else None for k, v in flat.items()}
  segments = (np.arange(tokens.shape[1])[None, :] >= start[:, None]).astype(np.int32)
  return model.prepare(tokens, segment_ids=segments, capacity=cfg.vision.row_capacity or None, **arrays)
