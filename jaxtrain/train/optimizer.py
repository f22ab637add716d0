"""AdamW with warmup + cosine / linear / constant schedules, global-norm clipping and no
weight decay on norms, biases and sinks."""

from __future__ import annotations

import jax
import optax

_NO_DECAY_NAMES = ("scale", "sinks")


def schedule(train_cfg) -> optax.Schedule:
  peak, steps, warmup = train_cfg.lr, max(train_cfg.steps, 1), min(train_cfg.warmup_steps, train_cfg.steps)
  if train_cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  elif train_cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, peak * train_cfg.min_lr_ratio, max(steps - warmup, 1))
  else:
    decay = optax.cosine_decay_schedule(peak, max(steps - warmup, 1), alpha=train_cfg.min_lr_ratio)
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(peak / warmup, peak, warmup - 1) if warmup > 1
                               else optax.constant_schedule(peak), decay], [warmup])


def decays(path) -> bool:
  # nnx.Variable leaves end their path in `.value`; the parameter's name is the key before it.
  keys = [k for k in path if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")]
  name = str(getattr(keys[-1], "key", getattr(keys[-1], "name", keys[-1])))
  return not (name in _NO_DECAY_NAMES or "bias" in name)


def decay_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(path), params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  parts = []
  if train_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.clip_norm))
  parts.append(optax.adamw(schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                           weight_decay=train_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
