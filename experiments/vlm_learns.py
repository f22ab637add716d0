"""Does the vision path learn? The tiny Qwen3-VL-MoE and InternVL models of
configs/qwen3_vl_tiny.py and configs/internvl_tiny.py trained on synthetic pictures whose
questions need the pixels, through the training batch contract (jaxtrain/models/vision/inputs.py:
token rows + the processor's pixel arrays -> per-row layout -> the jitted train step); then
held-out answer accuracy next to the same run with blank images (which can only learn the
answer prior: chance for balanced answers).

Pictures (32 x 32, numpy): coloured squares on a noisy background. Questions: the colour of
the square (4 colours), the quadrant it is in (4), how many squares there are (1-3), and for
Qwen3-VL also 4-frame videos of a moving square: which way it moves (4 directions). A sample
is [picture placeholders..., question token] -> answer token (loss on the answer only);
pixel values follow the Hugging Face processors' layouts (Qwen3-VL: mean/std 0.5, patches in
merge-window order, an image repeated over the temporal patch; InternVL: one 32-pixel tile).

    python experiments/vlm_learns.py [--steps 300] [--towers qwen3_vl,internvl] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40]], np.float32)
QUESTIONS = {"colour": 200, "position": 201, "count": 202, "motion": 203}
ANSWERS = {"colour": range(210, 214), "position": range(214, 218), "count": range(218, 221),
           "motion": range(221, 225)}
SIDE, SQUARE = 32, 8


def canvas(rng):
  return rng.normal(128, 20, (SIDE, SIDE, 3)).clip(0, 255).astype(np.float32)


def draw(img, y, x, colour):
  img[y:y + SQUARE, x:x + SQUARE] = COLORS[colour]


def picture(task, rng):
  """(frames [F, 32, 32, 3] in 0..255, answer index)."""
  img = canvas(rng)
  if task == "colour":
    c = int(rng.integers(4))
    draw(img, *rng.integers(0, SIDE - SQUARE, 2), c)
    return img[None], c
  if task == "position":
    q = int(rng.integers(4))
    y0, x0 = (q // 2) * SIDE // 2, (q % 2) * SIDE // 2
    draw(img, y0 + rng.integers(0, SIDE // 2 - SQUARE + 1), x0 + rng.integers(0, SIDE // 2 - SQUARE + 1),
         int(rng.integers(4)))
    return img[None], q
  if task == "count":
    n = int(rng.integers(1, 4))
    cells = rng.permutation(4)[:n]  # one square per quadrant, so they never overlap
    for cell in cells:
      draw(img, (cell // 2) * 16 + rng.integers(0, 9), (cell % 2) * 16 + rng.integers(0, 9), int(rng.integers(4)))
    return img[None], n - 1
  d = int(rng.integers(4))  # motion: right, left, down, up
  dy, dx = [(0, 5), (0, -5), (5, 0), (-5, 0)][d]
  y, x = (int(v) for v in rng.integers(8, 16, 2))
  colour = int(rng.integers(4))
  frames = []
  for f in range(4):
    frame = img.copy()
    draw(frame, y + f * dy - 4, x + f * dx - 4, colour)
    frames.append(frame)
  return np.stack(frames), d


def qwen_patches(frames, cfg):
  """The Qwen3-VL processor layout: normalised, the temporal patch filled by repeating (an
  image) or grouping frames, patches in merge-window order: ([patches, C*t*p*p], grid)."""
  v = cfg.vision
  p, m, tp = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
  x = ((frames / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2)  # [F, C, H, W]
  if len(x) == 1:
    x = np.repeat(x, tp, axis=0)
  gt, gh, gw = len(x) // tp, SIDE // p, SIDE // p
  x = x.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)


def intern_tile(frames):
  """An InternVL tile: ImageNet mean/std normalisation, [1, C, 32, 32]."""
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  return ((frames[0] / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]


def make_batch(cfg, tasks, rows, seq, rng, blank=False):
  """A pipeline batch (vision_batch contract) of one sample per row, and the answers."""
  v = cfg.vision
  out = {k: np.zeros((rows, seq), np.int32) for k in ("input_ids", "target_ids", "loss_mask", "segment_ids",
                                                      "positions")}
  pixels = {"image": [], "image_grid": [], "video": [], "video_grid": []}
  answers, kinds = [], []
  for r in range(rows):
    task = tasks[rng.integers(len(tasks))]
    frames, answer = picture(task, rng)
    if blank:
      frames = np.full_like(frames, 128.0)
    if v.tower == "rope_vit":
      patches, (gt, gh, gw) = qwen_patches(frames, cfg)
      per = gh * gw // v.spatial_merge_size ** 2
      if len(frames) > 1:
        ids = [1]
        for _ in range(gt):
          ids += [2] + [v.video_token_id] * per  # a timestamp-like token, then the frame
        pixels["video"].append(patches)
        pixels["video_grid"].append((gt, gh, gw))
      else:
        ids = [1] + [v.image_token_id] * per
        pixels["image"].append(patches)
        pixels["image_grid"].append((gt, gh, gw))
    else:
      ids = [1] + [v.image_token_id] * v.tokens_per_tile
      pixels["image"].append(intern_tile(frames))
    ids += [QUESTIONS[task], ANSWERS[task][answer]]
    n = len(ids) - 1
    out["input_ids"][r, :n], out["target_ids"][r, :n] = ids[:-1], ids[1:]
    out["segment_ids"][r, :n], out["positions"][r, :n] = 1, np.arange(n)
    out["loss_mask"][r, n - 1] = 1
    answers.append((n - 1, answer))
    kinds.append(task)
  if pixels["image"]:
    out["pixel_values"] = np.concatenate(pixels["image"])
    if v.tower == "rope_vit":
      out["image_grid_thw"] = np.asarray(pixels["image_grid"], np.int64)
  if pixels["video"]:
    out["pixel_values_videos"] = np.concatenate(pixels["video"])
    out["video_grid_thw"] = np.asarray(pixels["video_grid"], np.int64)
  return out, answers, kinds


def run(config_path, *, steps, rows, blank, seed=0):
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtrain.models import factory
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.parallel import rules
  from jaxtrain.parallel.mesh import make_mesh, mesh_context
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.run_config import load_config
  from jaxtrain.train.step import make_train_step
  from jaxtrain.models.vision.inputs import model_batch

  seq = 24
  config = load_config(config_path, [f"--config.train.steps={steps}", "--config.train.warmup_steps=20",
                                     "--config.train.lr=3e-3", f"--config.train.global_batch={rows}",
                                     f"--config.data.seq_len={seq}", "--config.model.vision.row_capacity=32"])
  cfg = ModelConfig.from_config(config.model, config.kernels)
  tasks = ["colour", "position", "count"] + (["motion"] if cfg.vision.tower == "rope_vit" else [])
  mesh = make_mesh(config.mesh)
  rng = np.random.default_rng(seed)
  with mesh_context(mesh):
    graphdef, abstract, _ = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, mesh)
    tx = make_optimizer(config.train)
    state = state_lib.init_state(state_lib.init_params(cfg, seed, shardings), tx,
                                 state_lib.state_shardings(tx, abstract, shardings, mesh), seed)
    step = jax.jit(make_train_step(graphdef, cfg, config.train, tx, schedule(config.train)), donate_argnums=(0,))

    @jax.jit
    def logits_at(params, batch):
      model = nnx.merge(graphdef, params)
      extra = {k: v for k, v in batch.items() if k not in ("input_ids", "target_ids", "loss_mask", "segment_ids",
                                                            "positions")}
      h, _, _ = model.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"],
                                    positions=batch["positions"], **extra)
      return model.logits(h)

    t0, losses = time.perf_counter(), []
    for i in range(steps):
      batch, _, _ = make_batch(cfg, tasks, rows, seq, rng, blank)
      state, metrics = step(state, {k: jnp.asarray(v) for k, v in model_batch(cfg, batch, seq).items()})
      if i % 25 == 0 or i == steps - 1:
        losses.append((i, float(metrics["loss"])))
    train_s = time.perf_counter() - t0
    held_out = np.random.default_rng(10_000 + seed)  # other pictures than training ever saw
    correct = {t: [] for t in tasks}
    for _ in range(8):
      batch, answers, kinds = make_batch(cfg, tasks, rows, seq, held_out, blank)
      logits = np.asarray(logits_at(state.params, {k: jnp.asarray(v) for k, v in model_batch(cfg, batch, seq).items()}))
      for r, ((pos, answer), task) in enumerate(zip(answers, kinds)):
        choices = list(ANSWERS[task])
        correct[task].append(int(np.argmax(logits[r, pos, choices])) == answer)
  accuracy = {t: float(np.mean(c)) for t, c in correct.items()}
  accuracy["all"] = float(np.mean([x for c in correct.values() for x in c]))
  return {"accuracy": accuracy, "chance": {t: 1 / len(ANSWERS[t]) for t in tasks}, "losses": losses,
          "train_seconds": train_s, "steps": steps, "rows": rows, "held_out": sum(len(c) for c in correct.values())}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--towers", default="qwen3_vl,internvl")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--rows", type=int, default=32)
  p.add_argument("--out", default=os.environ.get("OUT"))
  args = p.parse_args(argv)
  configs = {"qwen3_vl": "configs/qwen3_vl_tiny.py", "internvl": "configs/internvl_tiny.py"}
  results = {}
  for tower in [t for t in args.towers.split(",") if t]:
    for blank in (False, True):
      name = f"{tower}{' blank images' if blank else ''}"
      r = run(os.path.join(REPO, configs[tower]), steps=args.steps, rows=args.rows, blank=blank)
      results[name] = r
      acc = ", ".join(f"{t} {a:.1%}" for t, a in r["accuracy"].items())
      print(f"{name}: held-out accuracy {acc} (loss {r['losses'][0][1]:.3f} -> {r['losses'][-1][1]:.3f}, "
            f"{r['train_seconds']:.0f}s)", flush=True)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "vlm_learns.json"), "w") as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  sys.exit(main())
