"""The GRPO-family objective against TRL's GRPOTrainer (its own `_compute_loss`, fed our
log-probabilities), its advantage formula (with TRL's nanstd) and its soft overlong punishment."""

from __future__ import annotations

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.posttrain import rl_loss
from jaxtrain.posttrain.rewards import soft_overlong_penalty

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

N, T, MAX_LEN = 6, 7, 9


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  logps = rng.normal(-2.0, 0.5, (N, T)).astype(np.float32)
  old = (logps + rng.normal(0, 0.6, (N, T))).astype(np.float32)  # ratios beyond both clip bounds
  ref = (logps + rng.normal(0, 0.2, (N, T))).astype(np.float32)
  lengths = np.array([7, 3, 5, 1, 6, 4])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  advantages = (np.abs(rng.normal(0, 1, N)) * np.array([1, -1] * (N // 2))).astype(np.float32)
  return logps, old, ref, mask, advantages


def _trl_loss(loss_type, beta, eps_low, eps_high, logps, old, ref, mask, advantages):
  from trl.trainer.grpo_trainer import GRPOTrainer
  logps_t = torch.tensor(logps, requires_grad=True)
  identity = lambda x, **_: x  # noqa: E731
  fake = types.SimpleNamespace(
      _get_per_token_logps_and_entropies=lambda *a, **k: (logps_t, torch.zeros_like(logps_t), None),
      top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
      args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
      loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
      vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
      current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN, _entropy_bonus_enabled=False,
      aux_loss_enabled=False, accelerator=types.SimpleNamespace(num_processes=1, gather=identity, reduce=identity,
                                                                gather_for_metrics=identity),
      _metrics=collections.defaultdict(lambda: collections.defaultdict(list)))
  inputs = {"prompt_ids": torch.zeros((N, 2), dtype=torch.long), "prompt_mask": torch.ones((N, 2), dtype=torch.long),
            "completion_ids": torch.zeros((N, T), dtype=torch.long), "completion_mask": torch.tensor(mask),
            "advantages": torch.tensor(advantages), "old_per_token_logps": torch.tensor(old),
            "ref_per_token_logps": torch.tensor(ref), "num_items_in_batch": torch.tensor(float(mask.sum()))}
  loss = GRPOTrainer._compute_loss(fake, None, inputs)
  loss.backward()
  return float(loss.detach()), logps_t.grad.numpy(), fake._metrics["train"]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_gradient_and_metrics_equal_trl(loss_type, beta):
  eps_low, eps_high = 0.2, 0.28  # DAPO clip-higher
  logps, old, ref, mask, advantages = _inputs(len(loss_type))
  ref_loss, ref_grad, metrics = _trl_loss(loss_type, beta, eps_low, eps_high, logps, old, ref, mask, advantages)

  def ours(lp):
    per_token, kl, ratio = rl_loss.per_token_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(advantages),
                                                  epsilon_low=eps_low, epsilon_high=eps_high, beta=beta)
    return jnp.sum(per_token * rl_loss.token_weights(jnp.asarray(mask), loss_type, MAX_LEN)), (kl, ratio)

  (loss, (kl, ratio)), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(logps))
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-5, atol=1e-8)
  clips = rl_loss.clip_fractions(ratio, jnp.asarray(advantages), jnp.asarray(mask), epsilon_low=eps_low,
                                 epsilon_high=eps_high)
  assert float(clips["clip/low"]) > 0 and float(clips["clip/high"]) > 0
  for ours_key, trl_key in (("clip/low", "clip_ratio/low_mean"), ("clip/high", "clip_ratio/high_mean"),
                            ("clip/region", "clip_ratio/region_mean")):
    np.testing.assert_allclose(float(clips[ours_key]), metrics[trl_key][0], rtol=1e-6)
  if beta:
    np.testing.assert_allclose(float(jnp.sum(kl * mask) / mask.sum()), metrics["kl"][0], rtol=1e-5)


def _trl_advantages(rewards, G, scale):
  """TRL's sum_then_normalize advantages, step by step (grpo_trainer._generate_and_score_completions)."""
  from trl.trainer.utils import nanstd
  r = torch.tensor(rewards, dtype=torch.float64)
  mean = torch.nanmean(r.view(-1, G), dim=1).repeat_interleave(G)
  std = nanstd(r.view(-1, G), dim=1).repeat_interleave(G) if scale != "batch" else nanstd(r).expand_as(r)
  adv = r - mean
  if scale != "none":
    adv = adv / (std + 1e-4)
  return torch.nan_to_num(adv, nan=0.0).numpy(), torch.isclose(std, torch.zeros_like(std)).numpy()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl(scale):
  G = 4
  rewards = np.random.default_rng(1).normal(0, 1, 16)
  rewards[4:8] = 0.5  # a group with all-equal rewards
  rewards[9] = np.nan  # an unscorable completion
  ours, zero_std = rl_loss.group_advantages(rewards, G, scale)
  theirs, their_zero = _trl_advantages(rewards, G, scale)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ours[4:8], 0.0)
  if scale == "group":
    np.testing.assert_array_equal(zero_std, their_zero)


def test_soft_overlong_penalty_equals_trl():
  from trl.rewards import get_soft_overlong_punishment
  lengths = list(range(0, 25))
  theirs = get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=6)([[0] * n for n in lengths])
  np.testing.assert_allclose(soft_overlong_penalty([min(n, 20) for n in lengths], 20, 6, 1.0),
                             [theirs[min(n, 20)] for n in lengths])
  assert soft_overlong_penalty([20], 20, 6, 0.5) == [-0.5]
