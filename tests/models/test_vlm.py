"""Vision-language models against transformers (fp32, random weights from the registered
families' example configs): the vision tower and projector alone, then the whole model's
logits, on one image, several images of different sizes (non-square, across rows), a video
whose frame count is not a multiple of the temporal patch, and images with videos; the model
is called with exactly the arrays the processor returns."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from tests.models import hf_vlm as H

import jaxtrain

torch = pytest.importorskip("torch")

QWEN_CASES = ("image", "multi_image", "video", "mixed")
CASES = [(f, c) for f in ("qwen3_vl", "qwen3_vl_moe", "internvl") for c in QWEN_CASES]
_models: dict = {}


def models(family, tmp_path_factory):
  """(transformers model, jaxtrain model, jitted forward) per family, built once. The forward
  takes what `model(...)` makes of the processor's arrays (`model.prepare`) and returns the
  tower's projected features and DeepStack features with the logits: one compiled program
  serves every case of a family (the cases share shapes)."""
  if family not in _models:
    directory = str(tmp_path_factory.mktemp(family))
    hf = H.build_hf_vlm(family, directory, seed=5)
    model = jaxtrain.from_pretrained(directory)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, input_ids, segment_ids, rope_positions, vision_inputs):
      m = nnx.merge(graphdef, state)
      feats, deep = m.encode(vision_inputs, input_ids.shape[0])
      h, _, _ = m.hidden_states(input_ids, segment_ids=segment_ids, rope_positions=rope_positions, **vision_inputs)
      return feats, deep, m.logits(h)

    _models[family] = (hf, model, lambda *args: forward(state, *args))
  return _models[family]


def case_inputs(family, case):
  return H.intern_case(case) if family == "internvl" else H.qwen_case(case)


def hf_tower(hf, inputs):
  """transformers' projected vision features (and DeepStack features) in placeholder order."""
  with torch.no_grad():
    if "pixel_values_videos" not in inputs and "image_grid_thw" not in inputs:
      out = hf.model.get_image_features(torch.tensor(inputs["pixel_values"]))
      return out.pooler_output.reshape(-1, out.pooler_output.shape[-1]).numpy(), []
    feats, deep = [], []
    for key, grid, fn in (("pixel_values", "image_grid_thw", hf.model.get_image_features),
                          ("pixel_values_videos", "video_grid_thw", hf.model.get_video_features)):
      if key in inputs:
        out = fn(torch.tensor(inputs[key]), torch.tensor(inputs[grid]))
        feats.append(torch.cat(out.pooler_output).numpy())
        deep.append([torch.cat(d).numpy() for d in out.deepstack_features])
  return np.concatenate(feats), [np.concatenate(level) for level in zip(*deep)]


@pytest.mark.parametrize("family,case", CASES)
def test_vision_tower_then_whole_model_match_transformers(family, case, tmp_path_factory):
  hf, model, forward = models(family, tmp_path_factory)
  inputs = case_inputs(family, case)
  prepared = model.prepare(inputs["input_ids"], segment_ids=inputs["attention_mask"],
                           **{k: inputs.get(k) for k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                                         "video_grid_thw") if k in inputs})
  rope = prepared.pop("rope_positions", None)
  feats, deep, logits = forward(inputs["input_ids"], inputs["attention_mask"], rope, prepared)

  # The tower and projector alone: each row's features in placeholder order.
  counts = np.asarray(model.visual_tokens(jax.numpy.asarray(inputs["input_ids"]))).sum(axis=1)
  ours = np.concatenate([np.asarray(feats[b, :n]) for b, n in enumerate(counts)])
  ref, ref_deep = hf_tower(hf, inputs)
  tower_err = float(np.abs(ours - ref).max())
  for level, r in enumerate(ref_deep):
    ours_deep = np.concatenate([np.asarray(deep[level, b, :n]) for b, n in enumerate(counts)])
    tower_err = max(tower_err, float(np.abs(ours_deep - r).max()))

  # The whole model.
  logits = np.asarray(logits)
  ref_logits = H.hf_logits(hf, inputs)
  real = inputs["attention_mask"].astype(bool)
  err = float(np.abs(logits - ref_logits)[real].max())
  print(f"PARITY {family} {case}: tower max|diff|={tower_err:.3g}, logits max|diff|={err:.3g} "
        f"(max|logit|={np.abs(ref_logits).max():.3g})")
  assert tower_err <= 1e-4 and err <= 1e-4


@pytest.mark.parametrize("family,case", [("qwen3_vl_moe", "mixed"), ("internvl", "multi_image")])
def test_model_call_takes_the_processor_arrays(family, case, tmp_path_factory):
  """`model(**processor_output)`: numpy arrays as the processor returns them, mm_token_type_ids
  included; equal to transformers."""
  hf, model, _ = models(family, tmp_path_factory)
  inputs = case_inputs(family, case)
  logits = np.asarray(model(**inputs).logits)
  real = inputs["attention_mask"].astype(bool)
  assert np.abs(logits - H.hf_logits(hf, inputs))[real].max() <= 1e-4


def test_text_only_call_and_grid_mismatch_errors(tmp_path_factory):
  hf, model, _ = models("qwen3_vl", tmp_path_factory)
  toks = H.batch([list(range(5, 30))])
  logits = np.asarray(model(toks["input_ids"], attention_mask=toks["attention_mask"]).logits)
  real = toks["attention_mask"].astype(bool)
  assert np.abs(logits - H.hf_logits(hf, toks))[real].max() <= 1e-4
  inputs = H.qwen_case("image")
  with pytest.raises(ValueError, match=r"row 0: 20 image placeholder tokens .* needs 16"):
    model(inputs["input_ids"], pixel_values=inputs["pixel_values"][:64], image_grid_thw=np.array([[1, 8, 8]]))
