"""Training a vision-language model: the multimodal batch contract through the train step,
packing (documents packed into one row train exactly as when each has its own row: positions,
attention, the vision tower's per-image attention and the feature-to-token order all stay
inside a document), the train path against the `model(...)` call, and `model.freeze`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from tests.vlm_data import document, pipeline_batch, row_batch, tiny_vlm

from jaxtrain.models import factory
from jaxtrain.parallel import rules
from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.train import state as state_lib
from jaxtrain.train.config import defaults as train_defaults
from jaxtrain.train.freeze import with_freeze
from jaxtrain.train.optimizer import make_optimizer, schedule
from jaxtrain.train.step import make_eval_step, make_train_step
from jaxtrain.models.vision.inputs import model_batch

SEQ = 48
TOWERS = ("rope_vit", "cls_vit")


class Run:
  """A tiny VLM on one device: params, jitted eval and train steps."""

  def __init__(self, cfg, freeze=()):
    self.cfg = cfg.replace(freeze=tuple(freeze))
    self.mesh = make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1}),
                          jax.devices()[:1])
    tc = train_defaults()
    tc.warmup_steps, tc.lr, tc.weight_decay = 0, 1e-2, 0.0
    self.graphdef, abstract, _ = factory.abstract_model(self.cfg)
    shardings = rules.param_shardings(abstract, self.mesh)
    self.tx = with_freeze(make_optimizer(tc), self.cfg.freeze)
    state_sh = state_lib.state_shardings(self.tx, abstract, shardings, self.mesh)
    self.state = state_lib.init_state(state_lib.init_params(self.cfg, 3, shardings), self.tx, state_sh, 0)
    self.eval = jax.jit(make_eval_step(self.graphdef, tc))
    self.train = jax.jit(make_train_step(self.graphdef, self.cfg, tc, self.tx, schedule(tc)))

  def batch(self, pipeline):
    return {k: jax.numpy.asarray(v) for k, v in model_batch(self.cfg, pipeline, SEQ).items()}

  def loss(self, pipeline):
    with mesh_context(self.mesh):
      loss_sum, count = self.eval(self.state.params, self.batch(pipeline))
    return float(loss_sum), float(count)


_runs: dict = {}


def run_for(tower):
  if tower not in _runs:
    _runs[tower] = Run(tiny_vlm(tower))
  return _runs[tower]


@pytest.mark.parametrize("tower", TOWERS)
def test_packed_documents_train_like_separate_rows(tower):
  run = run_for(tower)
  rng = np.random.default_rng(1)
  docs = [document(run.cfg, rng, video=True), document(run.cfg, rng), document(run.cfg, rng, video=True)]
  packed = pipeline_batch(run.cfg, [docs[:2], docs[2:]], SEQ)
  separate = pipeline_batch(run.cfg, [docs[:1], docs[1:2]], SEQ)
  third = pipeline_batch(run.cfg, [docs[2:], docs[:1]], SEQ)
  loss_packed, count_packed = run.loss(packed)
  loss_a, count_a = run.loss(separate)
  loss_b, count_b = run.loss(third)
  loss_first, count_first = run.loss(pipeline_batch(run.cfg, [docs[:1], docs[:1]], SEQ))
  # packed rows = doc0 + doc1 + doc2; separate = doc0 + doc1 and doc2 + doc0
  expected = loss_a + loss_b - loss_first / 2
  assert count_packed == count_a + count_b - count_first / 2
  np.testing.assert_allclose(loss_packed, expected, rtol=2e-5)


@pytest.mark.parametrize("tower", TOWERS)
def test_train_path_matches_the_model_call(tower):
  """The eval step's loss on the pipeline batch equals cross-entropy of `model(...)` logits from
  the processor-style arrays (one document per row)."""
  run = run_for(tower)
  rng = np.random.default_rng(2)
  batch = pipeline_batch(run.cfg, [[document(run.cfg, rng, video=True)], [document(run.cfg, rng)]], SEQ)
  loss_sum, count = run.loss(batch)
  model = nnx.merge(run.graphdef, run.state.params)
  pixels = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
            if k in batch}
  logits = np.asarray(model(batch["input_ids"], attention_mask=batch["segment_ids"], **pixels).logits, np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, batch["target_ids"][..., None], axis=-1)[..., 0]
  mask = batch["loss_mask"].astype(bool)
  assert count == mask.sum()
  np.testing.assert_allclose(loss_sum, nll[mask].sum(), rtol=1e-5)


def _parts(params):
  flat = {tuple(str(k) for k in path): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}
  return {part: [a for p, a in flat.items() if (p[0] if p[0] in ("vision", "projector") else "language_model") == part]
          for part in ("vision", "projector", "language_model")}


@pytest.mark.parametrize("freeze", [("vision", "projector"), ("language_model",)])
def test_freeze_selects_what_trains(freeze):
  run = Run(tiny_vlm("rope_vit"), freeze)
  before = _parts(run.state.params)
  batch = run.batch(pipeline_batch(run.cfg, [[document(run.cfg, np.random.default_rng(4), video=True)]] * 2, SEQ))
  with mesh_context(run.mesh):
    state, metrics = run.train(run.state, batch)
  after = _parts(state.params)
  assert np.isfinite(float(metrics["loss"]))
  for part in before:
    moved = [not np.array_equal(a, b) for a, b in zip(before[part], after[part])]
    if part in freeze:
      assert not any(moved), f"{part} is frozen but changed"
    else:
      assert all(moved), f"{part} trains but some of its parameters did not change"
  # Adam moments exist for the trainable parameters only.
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  trainable = sum(a.size for part in before if part not in freeze for a in before[part])
  assert moments == 2 * trainable


@pytest.mark.parametrize("tower", ["rope_vit", "cls_vit"])
def test_per_row_layout_equals_flat_layout(tower):
  """The data pipeline's per-row batch gives the model the same inputs as the processor's flat
  arrays of the same rows (whose layout is checked against transformers in tests/models)."""
  cfg = tiny_vlm(tower)
  rng = np.random.default_rng(7)
  layout = [[document(cfg, rng, video=tower == "rope_vit"), document(cfg, rng)], [document(cfg, rng)]]
  flat = model_batch(cfg, pipeline_batch(cfg, layout, SEQ), SEQ)
  rows = row_batch(cfg, layout, SEQ, max_patches=cfg.vision.row_capacity - (8 if tower == "rope_vit" else 0),
                   max_items=6)
  if tower == "rope_vit":
    rows["mrope_positions"] = flat["rope_positions"].transpose(0, 2, 1)
  per_row = model_batch(cfg, rows, SEQ)
  assert sorted(per_row) == sorted(flat)
  for k in flat:
    np.testing.assert_array_equal(per_row[k], flat[k], err_msg=k)
  with pytest.raises(ValueError, match="data.vision.max_patches"):
    model_batch(cfg, row_batch(cfg, layout, SEQ, max_patches=cfg.vision.row_capacity + 4, max_items=6), SEQ)


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_preference_and_rl_methods_refuse_a_vision_language_model(method):
  from jaxtrain.config import ConfigError
  from jaxtrain.train.run_config import load_config
  with pytest.raises(ConfigError, match=f"train.method='{method}' is not supported for a vision-language model"):
    load_config("configs/qwen3_vl_tiny.py", [f"--config.train.method={method}"])
