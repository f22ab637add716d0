"""GRPO-family objectives: group-normalised advantages and the clipped policy loss with a KL
penalty, in the forms of GRPO, Dr. GRPO and DAPO (as TRL's GRPOTrainer computes them).

- advantages: reward minus the mean of its group (the completions of one prompt), divided by
  the group's std (GRPO), the batch's std, or nothing (Dr. GRPO); + 1e-4 in the denominator.
- per token: ratio r = exp(logp - logp_rollout); loss = -min(r A, clip(r, 1 - eps_low,
  1 + eps_high) A) + beta * k3, with k3 = exp(ref - logp) - (ref - logp) - 1.
- aggregation (`token_weights`): grpo = per-sequence mean, then mean over sequences; bnpo /
  dapo = mean over every completion token of the batch; dr_grpo = sum / (rows * max tokens).
  The weights are computed over the whole rollout batch, so micro-batches add up exactly.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

EPS = 1e-4


def _nanstd(x, axis=None):
  """Unbiased std ignoring NaNs (as TRL's nanstd)."""
  n = np.sum(~np.isnan(x), axis=axis, keepdims=True)
  mean = np.nanmean(x, axis=axis, keepdims=True)
  var = np.nanmean((x - mean) ** 2, axis=axis, keepdims=True) * n / np.maximum(n - 1, 1)
  return np.sqrt(var)


def group_advantages(rewards: np.ndarray, group_size: int, scale: str) -> tuple[np.ndarray, np.ndarray]:
  """rewards `[N]` (NaN = unscorable), rows grouped by `group_size` consecutive completions ->
  (advantages `[N]`, whether each row's group has all-equal rewards `[N]`)."""
  rewards = np.asarray(rewards, np.float64)
  grouped = rewards.reshape(-1, group_size)
  with warnings.catch_warnings():  # all-NaN groups (nothing scorable) give NaN, then 0
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.repeat(np.nanmean(grouped, axis=1), group_size)
    group_std = np.repeat(_nanstd(grouped, axis=1)[:, 0], group_size)
    advantages = rewards - mean
    if scale == "group":
      advantages = advantages / (group_std + EPS)
    elif scale == "batch":
      advantages = advantages / (_nanstd(rewards).item() + EPS)
    elif scale != "none":
      raise ValueError(f"scale_rewards {scale!r}")
  return np.nan_to_num(advantages, nan=0.0).astype(np.float32), np.isclose(np.nan_to_num(group_std), 0.0)


def token_weights(mask, loss_type: str, max_tokens: int):
  """mask `[N, T]` (completion tokens that get loss) -> the weight of each token's loss in the
  batch loss."""
  mask = mask.astype(jnp.float32)
  N = mask.shape[0]
  if loss_type == "grpo":
    return mask / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0) / N
  if loss_type in ("bnpo", "dapo"):
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  if loss_type == "dr_grpo":
    return mask / (N * max_tokens)
  raise ValueError(f"loss_type {loss_type!r}")


def per_token_loss(logps, old_logps, ref_logps, advantages, *, epsilon_low: float, epsilon_high: float,
                   beta: float):
  """-> (per-token loss `[N, T]`, per-token k3 KL (zeros when beta == 0), ratio `[N, T]`)."""
  ratio = jnp.exp(logps - old_logps)
  clipped = jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
  A = advantages[:, None]
  loss = -jnp.minimum(ratio * A, clipped * A)
  if beta:
    delta = ref_logps - logps
    kl = jnp.exp(delta) - delta - 1
    loss = loss + beta * kl
  else:
    kl = jnp.zeros_like(loss)
  return loss, kl, ratio


def clip_counts(ratio, advantages, mask, *, epsilon_low: float, epsilon_high: float) -> dict:
  """Loss tokens whose ratio was clipped: below with A < 0, above with A > 0 (sums, so
  micro-batches add up)."""
  mask = mask.astype(jnp.float32)
  A = advantages[:, None]
  low = (ratio < 1 - epsilon_low) & (A < 0)
  high = (ratio > 1 + epsilon_high) & (A > 0)
  return {"clip/low": jnp.sum(low * mask), "clip/high": jnp.sum(high * mask), "clip/region": jnp.sum((low | high) * mask)}


def clip_fractions(ratio, advantages, mask, *, epsilon_low: float, epsilon_high: float) -> dict:
  """`clip_counts` as shares of the loss tokens."""
  n = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
  counts = clip_counts(ratio, advantages, mask, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
  return {k: v / n for k, v in counts.items()}
