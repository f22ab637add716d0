"""Pairwise preference losses on sequence log-probabilities (pure math, no model).

Given for each pair the policy's summed log-probabilities of the chosen and rejected
completions, their token counts, and (for reference-based losses) the reference's summed
log-probabilities, `pair_losses` returns per-pair losses and the rewards reported as
rewards/chosen and rewards/rejected. Definitions follow TRL (tests compare against its code):

- sigmoid (DPO): -(1-e) log s(b D) - e log s(-b D), D = (c - c_ref) - (r - r_ref); e = 0 is DPO,
  e > 0 conservative DPO (cDPO);
- robust: (-(1-e) log s(b D) + e log s(-b D)) / (1 - 2e), unbiased under label noise e;
- hinge: relu(1 - b D);
- ipo: (D_c / n_c - D_r / n_r - 1 / (2b))^2, log-ratios averaged over completion tokens;
- simpo (reference-free): sigmoid loss of b (c/n_c - r/n_r - gamma / b);
- orpo (reference-free): the odds-ratio term -b log s(log odds) per pair, log odds =
  (c/n_c - r/n_r) - (log(1 - exp(c/n_c)) - log(1 - exp(r/n_r))). ORPO's other term, the NLL of
  the chosen sequences, is a token mean over the whole batch (as in TRL), so the objective adds
  it (preference_objective.py), not this per-pair function.

Rewards are b times the log-ratios (reference-based) or b times the average log-probabilities
(simpo, orpo); margins = chosen - rejected rewards; accuracy = chosen reward > rejected reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REFERENCE_FREE = ("simpo", "orpo")


def log1mexp(x):
  """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
  t = -0.6931471805599453
  return jnp.where(x < t, jnp.log1p(-jnp.exp(jnp.minimum(x, t))), jnp.log(-jnp.expm1(jnp.maximum(x, t))))


def orpo_log_odds(chosen, rejected, chosen_len, rejected_len):
  """log(odds(chosen) / odds(rejected)), odds = p / (1 - p) of the per-token average
  probability; 0 for a padding pair (no tokens, where log(1 - p) would be -inf)."""
  empty = (chosen_len <= 0) | (rejected_len <= 0)
  avg_c = jnp.where(empty, -1.0, chosen / jnp.maximum(chosen_len, 1.0))
  avg_r = jnp.where(empty, -1.0, rejected / jnp.maximum(rejected_len, 1.0))
  return (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))


def pair_losses(kind: str, chosen, rejected, chosen_len, rejected_len, ref_chosen=None, ref_rejected=None, *,
                beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5):
  """-> (losses [P], chosen_rewards [P], rejected_rewards [P]); all inputs [P] float32."""
  ls, logsig = label_smoothing, jax.nn.log_sigmoid
  n_c, n_r = jnp.maximum(chosen_len, 1.0), jnp.maximum(rejected_len, 1.0)
  if kind in REFERENCE_FREE:
    avg_c, avg_r = chosen / n_c, rejected / n_r
    if kind == "simpo":
      z = beta * (avg_c - avg_r - simpo_gamma / beta)
      losses = -(1 - ls) * logsig(z) - ls * logsig(-z)
    else:  # orpo: the odds-ratio term (the objective adds the NLL)
      losses = -beta * logsig(orpo_log_odds(chosen, rejected, chosen_len, rejected_len))
    return losses, beta * avg_c, beta * avg_r
  c_ratio, r_ratio = chosen - ref_chosen, rejected - ref_rejected
  z = beta * (c_ratio - r_ratio)
  if kind == "sigmoid":
    losses = -(1 - ls) * logsig(z) - ls * logsig(-z)
  elif kind == "robust":
    losses = (-(1 - ls) * logsig(z) + ls * logsig(-z)) / (1 - 2 * ls)
  elif kind == "hinge":
    losses = jax.nn.relu(1 - z)
  elif kind == "ipo":
    losses = (c_ratio / n_c - r_ratio / n_r - 1 / (2 * beta)) ** 2
  else:
    raise ValueError(f"unknown preference loss {kind!r}")
  return losses, beta * c_ratio, beta * r_ratio


def reward_metrics(chosen_rewards, rejected_rewards) -> dict:
  """Per-pair sums (the trainer divides by the number of pairs): rewards/chosen,
  rewards/rejected, rewards/margins, rewards/accuracies."""
  return {
      "rewards/chosen": jnp.sum(chosen_rewards),
      "rewards/rejected": jnp.sum(rejected_rewards),
      "rewards/margins": jnp.sum(chosen_rewards - rejected_rewards),
      "rewards/accuracies": jnp.sum((chosen_rewards > rejected_rewards).astype(jnp.float32)),
  }
