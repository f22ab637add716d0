"""Tiny vision-language model configs and synthetic multimodal training batches in the
pipeline contract of `jaxtrain/models/vision/inputs.py` (text keys + the processor's flat pixel
arrays), for the train-step and parallel tests."""

from __future__ import annotations

import numpy as np

from jaxtrain.models.config import ModelConfig, VisionConfig

IMAGE, VIDEO = 60, 61  # placeholder token ids of the tiny models


def tiny_vlm(tower: str = "rope_vit", **changes) -> ModelConfig:
  """rope_vit: a Qwen3-VL-MoE-like model (DeepStack into 2 of 3 MoE layers); cls_vit: an
  InternVL-like one (16-pixel tiles of 4 x 4 patches -> 4 tokens per tile) on a dense LM."""
  base = dict(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
              intermediate_size=48, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
              max_position_embeddings=256, rope_theta=10000.0, gmm_impl="xla", attention_impl="xla")
  if tower == "rope_vit":
    vision = VisionConfig(tower="rope_vit", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                          patch_size=2, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16,
                          deepstack_layers=(0, 1), image_token_id=IMAGE, video_token_id=VIDEO, row_capacity=64,
                          remat="save_dots")
    base.update(mrope_section=(2, 1, 1), vision=vision)
  else:
    vision = VisionConfig(tower="cls_vit", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                          patch_size=4, image_size=16, spatial_merge_size=2, activation="gelu", norm="layer_norm",
                          qkv_bias=False, image_token_id=IMAGE, row_capacity=4, remat="full")
    base.update(vision=vision, num_experts=0)
  vision_changes = changes.pop("vision", {})
  base.update(changes)
  cfg = ModelConfig(**base)
  return cfg.replace(vision=cfg.vision.__class__(**{**cfg.vision.__dict__, **vision_changes}))


def document(cfg: ModelConfig, rng, *, video: bool = False):
  """One document: (token ids, pixel arrays of its images / video). Loss goes on the text after
  the pictures (`document_mask`)."""
  v = cfg.vision
  ids = list(rng.integers(1, 50, 3))
  pixels = {"image": [], "video": []}
  if v.tower == "rope_vit":
    h, w = (int(x) for x in rng.choice([2, 4], 2))
    pixels["image"].append(((1, h, w), rng.normal(size=(h * w, v.patch_dim)).astype(np.float32)))
    ids += [IMAGE] * (h * w // 4)
    if video:
      pixels["video"].append(((2, 2, 4), rng.normal(size=(16, v.patch_dim)).astype(np.float32)))
      for _ in range(2):
        ids += [int(rng.integers(1, 50))] + [VIDEO] * 2
  else:
    tiles = int(rng.integers(1, 3))
    pixels["image"].append((tiles, rng.normal(size=(tiles, 3, 16, 16)).astype(np.float32)))
    ids += [IMAGE] * (tiles * v.tokens_per_tile)
  ids += list(rng.integers(1, 50, 6))
  return ids, pixels


def pipeline_batch(cfg: ModelConfig, layout: list[list], seq: int) -> dict:
  """Rows of documents (from `document`) -> a pipeline batch: text keys [rows, seq] (segments
  restart positions; loss on each document's tokens after its first picture token) and the
  flat pixel arrays in row-major placeholder order."""
  rows = len(layout)
  out = {k: np.zeros((rows, seq), np.int32) for k in ("input_ids", "target_ids", "loss_mask", "segment_ids",
                                                      "positions")}
  images, image_grids, videos, video_grids = [], [], [], []
  for r, docs in enumerate(layout):
    at = 0
    for d, (ids, pixels) in enumerate(docs, start=1):
      n = len(ids) - 1  # predict ids[1:] from ids[:-1]
      sl = slice(at, at + n)
      out["input_ids"][r, sl], out["target_ids"][r, sl] = ids[:-1], ids[1:]
      out["segment_ids"][r, sl], out["positions"][r, sl] = d, np.arange(n)
      visual = np.isin(np.asarray(ids[:-1]), [IMAGE, VIDEO])
      last_visual = int(np.nonzero(visual)[0].max())
      out["loss_mask"][r, at + last_visual + 1:at + n] = 1
      for grid, pix in pixels["image"]:
        images.append(pix)
        image_grids.append(grid)
      for grid, pix in pixels["video"]:
        videos.append(pix)
        video_grids.append(grid)
      at += n
  if cfg.vision.tower == "rope_vit":
    out.update(pixel_values=np.concatenate(images), image_grid_thw=np.asarray(image_grids, np.int64))
    if videos:
      out.update(pixel_values_videos=np.concatenate(videos), video_grid_thw=np.asarray(video_grids, np.int64))
  else:
    out["pixel_values"] = np.concatenate(images)
  return out


def row_batch(cfg: ModelConfig, layout: list[list], seq: int, *, max_patches: int, max_items: int) -> dict:
  """The same rows in the data pipeline's per-row layout (jaxtrain/data/vision/batch.py):
  each row's patches in placeholder order, 1-based item ids, grids and item documents
  (InternVL: one item per tile). Without `mrope_positions`: the caller adds them."""
  out = {k: v for k, v in pipeline_batch(cfg, layout, seq).items() if k in ("input_ids", "target_ids", "loss_mask",
                                                                           "segment_ids", "positions")}
  rows = len(layout)
  patch = (cfg.vision.patch_dim,) if cfg.vision.tower == "rope_vit" else (3, 16, 16)
  pixels, items = np.zeros((rows, max_patches, *patch), np.float32), np.zeros((rows, max_patches), np.int32)
  grids, docs_of = np.zeros((rows, max_items, 3), np.int32), np.zeros((rows, max_items), np.int32)
  for r, docs in enumerate(layout):
    at = item = 0
    for d, (_, pixels_of) in enumerate(docs, start=1):
      for grid, pix in pixels_of["image"] + pixels_of["video"]:
        per_item = [((1, 1, 1), p[None]) for p in pix] if cfg.vision.tower == "cls_vit" else [(grid, pix)]
        for g, p in per_item:
          item += 1
          pixels[r, at:at + len(p)], items[r, at:at + len(p)] = p, item
          grids[r, item - 1], docs_of[r, item - 1] = g, d
          at += len(p)
  out.update(pixel_values=pixels, pixel_segment_ids=items, vision_grid_thw=grids, vision_segment_ids=docs_of)
  return out


def random_batch(cfg: ModelConfig, rows: int, seq: int, seed: int, docs_per_row: int = 2) -> dict:
  rng = np.random.default_rng(seed)
  return pipeline_batch(cfg, [[document(cfg, rng, video=(r + d) % 2 == 0) for d in range(docs_per_row)]
                              for r in range(rows)], seq)


def train_curve(tower: str, mesh: dict, *, steps: int = 3, rows: int = 8, seq: int = 48,
                devices: int | None = None) -> dict:
  """Losses and gradient norms of `steps` train steps of `tiny_vlm(tower)` on fixed synthetic
  batches under the given mesh sizes (the whole path: pipeline batch -> per-row layout ->
  sharded arrays -> jitted step). Run it in a process with simulated devices (`run_python`)."""
  import jax
  from jax.sharding import NamedSharding
  from ml_collections import ConfigDict

  from jaxtrain.models import factory
  from jaxtrain.parallel import rules
  from jaxtrain.parallel.mesh import make_mesh, mesh_context
  from jaxtrain.parallel.rules import logical_to_spec
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.config import defaults as train_defaults
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.step import make_train_step
  from jaxtrain.models.vision.inputs import model_batch, model_shapes

  cfg = tiny_vlm(tower)
  tc = train_defaults()
  tc.global_batch, tc.warmup_steps, tc.steps = rows, 1, steps
  m = make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **mesh}),
                None if devices is None else jax.devices()[:devices])
  with mesh_context(m):
    graphdef, abstract, _ = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, m)
    tx = make_optimizer(tc)
    state_sh = state_lib.state_shardings(tx, abstract, shardings, m)
    state = state_lib.init_state(state_lib.init_params(cfg, 0, shardings), tx, state_sh, 0)
    text = NamedSharding(m, logical_to_spec(("act_batch", "act_seq"), (rows, seq), m))
    batch_sh = {k: text for k in ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")}
    for k, (shape, _) in model_shapes(cfg, rows, seq).items():
      axes = ("act_batch", "act_seq") if k == "rope_positions" else ("act_batch",)
      batch_sh[k] = NamedSharding(m, logical_to_spec(axes + (None,) * (len(shape) - len(axes)), shape, m))
    step = jax.jit(make_train_step(graphdef, cfg, tc, tx, schedule(tc)), in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
    losses, norms = [], []
    for i in range(steps):
      b = model_batch(cfg, random_batch(cfg, rows, seq, seed=i), seq)
      b = {k: jax.device_put(np.asarray(b[k]), batch_sh[k]) for k in batch_sh}
      state, metrics = step(state, b)
      metrics = jax.device_get(metrics)
      losses.append(float(metrics["loss"]))
      norms.append(float(metrics["grad_norm"]))
  vision_sharded = any(any(e is not None for e in s.spec) for p, s in nnx_flat(shardings) if p[0] == "vision")
  return {"loss": losses, "grad_norm": norms, "vision_params_sharded": bool(vision_sharded)}


def nnx_flat(tree):
  from flax import nnx
  return [(tuple(str(k) for k in path), var.get_value()) for path, var in nnx.to_flat_state(tree)]
