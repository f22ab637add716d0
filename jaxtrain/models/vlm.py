"""A vision-language model: the decoder (`Decoder`, its parameters where a text model keeps
them) plus a vision tower (`vision/...`) and a projector (`projector/...`) that turn pixels into
features replacing the image / video placeholder tokens' embeddings.

Two ways in:
- `model(input_ids, pixel_values=..., image_grid_thw=..., pixel_values_videos=...,
  video_grid_thw=..., attention_mask=...)` takes exactly what a Hugging Face processor returns
  (numpy, jax or torch arrays; `mm_token_type_ids` is accepted and implied by the ids), lays it
  out per row on the host (`vision/layout.py`) and returns `Output` (`.logits` `[B, T, V]`).
  Text-only calls work as for a text model.
- `hidden_states(input_ids, segment_ids=, positions=, rope_positions=, **vision_inputs)` takes
  the per-row arrays (fixed shapes, jit-friendly): what the train step calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.decoder import Decoder, Output
from jaxtrain.models.vision import layout
from jaxtrain.parallel.rules import constrain

VISION_KEYS = {
    "rope_vit": ("vision_patches", "vision_segments", "vision_hw", "vision_pos_index", "vision_pos_weight"),
    "cls_vit": ("vision_pixels",),
}


def part_of(path: tuple) -> str:
  """Which `model.freeze` part a parameter path belongs to."""
  head = str(path[0]) if path else ""
  return head if head in ("vision", "projector") else "language_model"


class VisionLanguageModel(Decoder):

  def __init__(self, cfg: ModelConfig, tower, projector, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.vision = tower(cfg, rngs=rngs)
    self.projector = projector(cfg, rngs=rngs)

  def visual_tokens(self, input_ids):
    v = self.cfg.vision
    mask = input_ids == v.image_token_id
    if v.tower == "rope_vit":
      mask = mask | (input_ids == v.video_token_id)
    return mask

  def encode(self, vision_inputs: dict, rows: int):
    """Projected features `[B, F, E]` and DeepStack features `[k, B, F, E]` (or None)."""
    hidden, taps = self.vision(**vision_inputs)
    return self.projector(hidden, taps, rows)

  def hidden_states(self, input_ids, *, segment_ids=None, positions=None, cache=None, rope_positions=None,
                    **vision_inputs):
    """As `Decoder.hidden_states`, with the per-row vision inputs (`VISION_KEYS`): the k-th
    placeholder token of a row takes the k-th feature of the row."""
    if not vision_inputs:
      return super().hidden_states(input_ids, segment_ids=segment_ids, positions=positions, cache=cache,
                                   rope_positions=rope_positions)
    missing = set(VISION_KEYS[self.cfg.vision.tower]) - set(vision_inputs)
    if missing or len(vision_inputs) != len(VISION_KEYS[self.cfg.vision.tower]):
      raise ValueError(f"vision inputs {sorted(vision_inputs)}; the {self.cfg.vision.tower} tower takes "
                       f"{VISION_KEYS[self.cfg.vision.tower]}")
    features, deep = self.encode(vision_inputs, input_ids.shape[0])
    mask = self.visual_tokens(input_ids)
    index = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, features.shape[1] - 1)
    x = self.embed_tokens(input_ids)
    picked = jnp.take_along_axis(features, index[..., None], axis=1).astype(x.dtype)
    x = constrain(jnp.where(mask[..., None], picked, x), ("act_batch", "act_seq", "act_embed"))
    deepstack = None
    if deep is not None:
      picked = jnp.take_along_axis(deep, index[None, ..., None], axis=2).astype(x.dtype)
      deepstack = jnp.where(mask[None, ..., None], picked, 0)
    return super().hidden_states(input_ids, segment_ids=segment_ids, positions=positions, cache=cache,
                                 inputs_embeds=x, rope_positions=rope_positions, deepstack=deepstack)

  def prepare(self, input_ids, *, segment_ids=None, pixel_values=None, image_grid_thw=None,
              pixel_values_videos=None, video_grid_thw=None, capacity=None) -> dict:
    """Host-side: the processor's flat arrays -> per-row model inputs (numpy)."""
    v = self.cfg.vision
    if v.tower == "rope_vit":
      if pixel_values is None and pixel_values_videos is None:
        return {}
      return layout.rope_vit_inputs(v, input_ids, segment_ids, pixel_values=pixel_values,
                                    image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
                                    video_grid_thw=video_grid_thw, capacity=capacity)
    if pixel_values_videos is not None or video_grid_thw is not None:
      raise ValueError(f"the {v.tower} tower takes images only (pixel_values)")
    if pixel_values is None:
      return {}
    return layout.cls_vit_inputs(v, input_ids, pixel_values=pixel_values, capacity=capacity)

  def __call__(self, input_ids, *, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
               video_grid_thw=None, attention_mask=None, mm_token_type_ids=None, segment_ids=None, positions=None,
               cache=None, rope_positions=None, **vision_inputs) -> Output:
    del mm_token_type_ids  # the placeholder ids say the same
    if segment_ids is None and attention_mask is not None:
      segment_ids = jnp.asarray(attention_mask, jnp.int32)
    pixels = (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
    prepared = {}
    if any(x is not None for x in pixels):  # host-side layout (concrete arrays: not under jit)
      prepared = self.prepare(layout.as_numpy(input_ids), segment_ids=layout.as_numpy(segment_ids),
                              pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                              pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw)
    if prepared:
      rope_positions = prepared.pop("rope_positions", rope_positions)
      vision_inputs = {k: jnp.asarray(a) for k, a in prepared.items()}
    graphdef, state = nnx.split(self)
    kwargs = dict(segment_ids=segment_ids, positions=positions, cache=cache, rope_positions=rope_positions,
                  **vision_inputs)
    kwargs = {k: jnp.asarray(v) if k != "cache" else v for k, v in kwargs.items() if v is not None}
    return _forward(graphdef, state, jnp.asarray(input_ids, jnp.int32), kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, kwargs) -> Output:
  """One compiled forward pass per graph and input shapes (the host-side layout is done)."""
  model = nnx.merge(graphdef, state)
  h, aux, cache = model.hidden_states(input_ids, **kwargs)
  return Output(logits=model.logits(h), hidden=h, aux=aux, cache=cache)
