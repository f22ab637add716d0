"""Every preference loss and its rewards / margins / accuracy against TRL's own code, run on
the same per-token log-probabilities (TRL 1.x keeps the DPO losses inside
`DPOTrainer._compute_loss`, SimPO in `CPOTrainer.cpo_loss`, ORPO in
`ORPOTrainer.odds_ratio_loss`; they are called with stand-ins for the trainer and model)."""

import collections
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxtrain.posttrain.objective import Forward
from jaxtrain.posttrain.preference_objective import PreferenceObjective

P, T = 6, 10


def _data(seed=0, equal_lengths=False):
  rng = np.random.default_rng(seed)
  mask = np.zeros((P, 2, T), np.int32)
  for i in range(P):
    for j in range(2):
      start = 2 if equal_lengths else rng.integers(1, 4)
      end = T - 1 if equal_lengths else rng.integers(start + 1, T)
      mask[i, j, start:end] = 1
  logps = (-rng.uniform(0.05, 1.5, (P, 2, T)) * mask).astype(np.float32)
  ref = (-rng.uniform(0.05, 1.5, (P, 2, T)) * mask).astype(np.float32)
  return logps, ref, mask


def _ours(kind, logps, ref, mask, **pref):
  config = ConfigDict({"preference": {"loss": kind, "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5,
                                      "reference": "base", **pref}})
  obj = PreferenceObjective(config)
  batch = {"loss_mask": jnp.asarray(mask), "input_ids": jnp.zeros(mask.shape, jnp.int32)}
  fwd = Forward(policy=lambda b: (jnp.asarray(logps), {}), reference=lambda b: jnp.asarray(ref))
  loss_sum, _, sums = obj.loss(fwd, batch)
  n = float(obj.normalizer(batch))
  return float(loss_sum) / n, {k: float(v) / n for k, v in sums.items()}


class _Acc:
  device = torch.device("cpu")

  @staticmethod
  def gather(x):
    return x

  gather_for_metrics = gather


def _trl_dpo(kind, logps, ref, mask, label_smoothing=0.0):
  from trl import DPOTrainer
  # TRL orders the batch [all chosen, all rejected]; its completion_mask is shifted by one.
  def stack(a):
    return torch.tensor(np.concatenate([a[:, 0], a[:, 1]]))
  shift = stack(mask)
  completion = torch.cat([torch.zeros(2 * P, 1, dtype=shift.dtype), shift], dim=1)
  outputs = types.SimpleNamespace(log_probs=stack(logps), entropy=torch.zeros(2 * P, T),
                                  mean_logits=torch.zeros(2 * P, T), is_top1=torch.zeros(2 * P, T, dtype=torch.bool))
  ref_seq = ref.sum(-1)
  fake = types.SimpleNamespace(
      model=types.SimpleNamespace(training=True), accelerator=_Acc(), aux_loss_enabled=False, ld_alpha=None,
      precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[kind], loss_weights=[1.0], beta=0.1,
      label_smoothing=label_smoothing, use_weighting=False, _metrics={"train": collections.defaultdict(list)},
      _total_train_tokens=0, _tp_size=1)
  inputs = {"input_ids": torch.zeros(2 * P, T + 1, dtype=torch.long), "attention_mask": torch.ones(2 * P, T + 1),
            "completion_mask": completion, "ref_chosen_logps": torch.tensor(ref_seq[:, 0]),
            "ref_rejected_logps": torch.tensor(ref_seq[:, 1])}
  loss = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, False)
  return float(loss), {k: v[-1] for k, v in fake._metrics["train"].items()}


@pytest.mark.parametrize("kind,ls", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)])
def test_dpo_family_equals_trl(kind, ls):
  logps, ref, mask = _data(1)
  loss, metrics = _ours(kind, logps, ref, mask, label_smoothing=ls)
  trl_loss, trl = _trl_dpo(kind, logps, ref, mask, label_smoothing=ls)
  assert loss == pytest.approx(trl_loss, abs=1e-6)
  for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected"):
    assert metrics[name] == pytest.approx(trl[name], abs=1e-6), name
  assert 0 < metrics["rewards/accuracies"] < 1  # the data exercises both outcomes


def _trl_pair(cls_name, avg_c, avg_r, **attrs):
  fake = types.SimpleNamespace(accelerator=_Acc(), beta=0.1, **attrs)
  if cls_name == "cpo":
    from trl.experimental.cpo import CPOTrainer
    return CPOTrainer.cpo_loss(fake, torch.tensor(avg_c), torch.tensor(avg_r))
  from trl.experimental.orpo import ORPOTrainer
  return ORPOTrainer.odds_ratio_loss(fake, torch.tensor(avg_c), torch.tensor(avg_r))


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_simpo_and_conservative_dpo_equal_trl(ls):
  logps, ref, mask = _data(2)
  n = mask.sum(-1)
  avg = logps.sum(-1) / n
  loss, metrics = _ours("simpo", logps, ref, mask, label_smoothing=ls)
  losses, cr, rr = _trl_pair("cpo", avg[:, 0], avg[:, 1], alpha=0.0, loss_type="simpo", simpo_gamma=0.5,
                             label_smoothing=ls)
  assert loss == pytest.approx(float(losses.mean()), abs=1e-6)
  assert metrics["rewards/chosen"] == pytest.approx(float(cr.mean()), abs=1e-6)
  assert metrics["rewards/margins"] == pytest.approx(float((cr - rr).mean()), abs=1e-6)
  assert metrics["rewards/accuracies"] == pytest.approx(float((cr > rr).float().mean()), abs=1e-6)
  # Label-smoothed (conservative) DPO: CPO's sigmoid loss applied to the log-ratios.
  loss, _ = _ours("sigmoid", logps, ref, mask, label_smoothing=ls)
  ratios = logps.sum(-1) - ref.sum(-1)
  losses, _, _ = _trl_pair("cpo", ratios[:, 0], ratios[:, 1], alpha=0.0, loss_type="sigmoid", label_smoothing=ls)
  assert loss == pytest.approx(float(losses.mean()), abs=1e-6)


def test_orpo_equals_trl():
  logps, ref, mask = _data(3, equal_lengths=True)  # TRL's NLL is a token mean over the batch
  n = mask.sum(-1)
  avg = logps.sum(-1) / n
  loss, metrics = _ours("orpo", logps, ref, mask)
  losses, cr, rr, _, _ = _trl_pair("orpo", avg[:, 0], avg[:, 1])
  nll = -logps[:, 0].sum() / mask[:, 0].sum()
  assert loss == pytest.approx(float(nll - losses.mean()), abs=1e-6)
  assert metrics["rewards/chosen"] == pytest.approx(float(cr.mean()), abs=1e-6)
  assert metrics["rewards/rejected"] == pytest.approx(float(rr.mean()), abs=1e-6)


def test_padding_pairs_count_for_nothing():
  logps, ref, mask = _data(4)
  loss, metrics = _ours("sigmoid", logps, ref, mask)
  pad = lambda a: np.concatenate([a, np.zeros((2,) + a.shape[1:], a.dtype)])  # noqa: E731
  loss2, metrics2 = _ours("sigmoid", pad(logps), pad(ref), pad(mask))
  assert loss2 == pytest.approx(loss, abs=1e-6)
  assert metrics2 == pytest.approx(metrics, abs=1e-6)
