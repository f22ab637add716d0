"""Every preference loss and its rewards / margins / accuracy against TRL's own code, run on
the same per-token log-probabilities (TRL 1.x keeps the DPO losses inside
`DPOTrainer._compute_loss`, SimPO in `CPOTrainer.cpo_loss`, ORPO in
`ORPOTrainer.get_batch_loss_metrics`; they are called with stand-ins for the trainer and model)."""

import collections
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxtrain.posttrain.objective import Forward
from jaxtrain.posttrain.preference_objective import PreferenceObjective

trl = pytest.importorskip("trl")
from trl import DPOTrainer  # noqa: E402
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402

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
  """(loss, metrics) of jaxtrain's objective; `mask` is the loss mask or a whole batch."""
  config = ConfigDict({"preference": {"loss": kind, "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5,
                                      "reference": "base", "orpo_prompt_nll": True, **pref}})
  obj = PreferenceObjective(config)
  if isinstance(mask, dict):
    batch = {k: jnp.asarray(v) for k, v in mask.items()}
  else:
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


def _trl_cpo(avg_c, avg_r, **attrs):
  fake = types.SimpleNamespace(accelerator=_Acc(), beta=0.1, **attrs)
  return CPOTrainer.cpo_loss(fake, torch.tensor(avg_c), torch.tensor(avg_r))


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_simpo_and_conservative_dpo_equal_trl(ls):
  logps, ref, mask = _data(2)
  n = mask.sum(-1)
  avg = logps.sum(-1) / n
  loss, metrics = _ours("simpo", logps, ref, mask, label_smoothing=ls)
  losses, cr, rr = _trl_cpo(avg[:, 0], avg[:, 1], alpha=0.0, loss_type="simpo", simpo_gamma=0.5,
                             label_smoothing=ls)
  assert loss == pytest.approx(float(losses.mean()), abs=1e-6)
  assert metrics["rewards/chosen"] == pytest.approx(float(cr.mean()), abs=1e-6)
  assert metrics["rewards/margins"] == pytest.approx(float((cr - rr).mean()), abs=1e-6)
  assert metrics["rewards/accuracies"] == pytest.approx(float((cr > rr).float().mean()), abs=1e-6)
  # Label-smoothed (conservative) DPO: CPO's sigmoid loss applied to the log-ratios.
  loss, _ = _ours("sigmoid", logps, ref, mask, label_smoothing=ls)
  ratios = logps.sum(-1) - ref.sum(-1)
  losses, _, _ = _trl_cpo(ratios[:, 0], ratios[:, 1], alpha=0.0, loss_type="sigmoid", label_smoothing=ls)
  assert loss == pytest.approx(float(losses.mean()), abs=1e-6)


def _orpo_case(seed=5, V=11):
  """Pairs with prompts and completions of different lengths, as token sequences with random
  logits: (our batch [P, 2, T] and per-token log-probs, TRL's batch, TRL's logits)."""
  rng = np.random.default_rng(seed)
  seqs = []  # per pair: (prompt length incl. BOS, chosen ids, rejected ids)
  for _ in range(P):
    p = int(rng.integers(2, 5))
    prompt = list(rng.integers(1, V, p))
    seqs.append((p, prompt + list(rng.integers(1, V, rng.integers(1, T - p + 1))),
                 prompt + list(rng.integers(1, V, rng.integers(1, T - p + 1)))))
  logits = torch.tensor(rng.normal(0, 2.0, (2 * P, T, V)), dtype=torch.float32)
  logp_all = torch.log_softmax(logits, -1).numpy()
  ours = {k: np.zeros((P, 2, T), np.int32) for k in ("input_ids", "target_ids", "loss_mask", "segment_ids",
                                                     "positions")}
  logps = np.zeros((P, 2, T), np.float32)
  trl_batch = {f"{side}_{k}": torch.zeros(P, T, dtype=torch.long) for side in ("chosen", "rejected")
               for k in ("input_ids", "attention_mask", "labels")}
  for i, (p, *rows) in enumerate(seqs):
    for j, (side, ids) in enumerate(zip(("chosen", "rejected"), rows)):
      n = len(ids)
      ours["input_ids"][i, j, :n] = ids
      ours["target_ids"][i, j, :n - 1] = ids[1:]
      ours["loss_mask"][i, j, p - 1:n - 1] = 1  # targets in the completion (data/preference.py)
      ours["segment_ids"][i, j, :n] = 1
      ours["positions"][i, j, :n] = np.arange(n)
      row = logp_all[j * P + i]  # TRL stacks all chosen, then all rejected
      logps[i, j, :n - 1] = row[np.arange(n - 1), ids[1:]]
      trl_batch[f"{side}_input_ids"][i, :n] = torch.tensor(ids)
      trl_batch[f"{side}_attention_mask"][i, :n] = 1
      trl_batch[f"{side}_labels"][i] = -100
      trl_batch[f"{side}_labels"][i, p:n] = torch.tensor(ids[p:])
  return ours, logps, trl_batch, logits


def _trl_orpo(trl_batch, logits, beta=0.1):
  fake = ORPOTrainer.__new__(ORPOTrainer)  # a stand-in: the attributes its loss reads, no __init__
  fake.__dict__.update(is_encoder_decoder=False, padding_value=0, accelerator=_Acc(), aux_loss_enabled=False,
                       beta=beta)
  model = lambda ids, **kw: types.SimpleNamespace(logits=logits)  # noqa: E731
  loss, metrics = fake.get_batch_loss_metrics(model, trl_batch)
  return float(loss), metrics


@pytest.mark.parametrize("prompt_nll", [True, False])
def test_orpo_equals_trl_with_unequal_lengths(prompt_nll):
  batch, logps, trl_batch, logits = _orpo_case()
  assert len({int(n) for n in batch["loss_mask"][:, 0].sum(-1)}) > 1  # completion lengths differ
  if not prompt_nll:  # TRL's NLL covers every attended token: attend to the completions only
    for side in ("chosen", "rejected"):
      trl_batch[f"{side}_attention_mask"] = (trl_batch[f"{side}_labels"] != -100).long()
  trl_loss, trl = _trl_orpo(trl_batch, logits)
  loss, metrics = _ours("orpo", logps, logps, batch, orpo_prompt_nll=prompt_nll)
  assert loss == pytest.approx(trl_loss, abs=1e-6)
  for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"):
    assert metrics[name] == pytest.approx(trl[name], abs=1e-6), name
  # a mean over the batch's tokens, not over pairs: per-pair means would give another value
  mask = batch["segment_ids"][:, 0] * np.roll(batch["segment_ids"][:, 0], -1, axis=1)
  mask[:, -1] = 0
  per_pair = np.mean(-(logps[:, 0] * mask).sum(-1) / mask.sum(-1))
  if prompt_nll:
    assert abs(per_pair - trl["nll_loss"]) > 1e-3


def test_orpo_micro_batches_add_up_to_the_whole_batch():
  batch, logps, _, _ = _orpo_case(seed=6)
  whole, _ = _ours("orpo", logps, logps, batch)
  config = ConfigDict({"preference": {"loss": "orpo", "beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5,
                                      "reference": "base", "orpo_prompt_nll": True}})
  obj = PreferenceObjective(config)
  full = {k: jnp.asarray(v) for k, v in batch.items()}
  totals, n = obj.totals(full), float(obj.normalizer(full))
  parts = 0.0
  for rows in (slice(0, 2), slice(2, P)):  # unequal micro-batches, as under data parallelism
    micro = {k: v[rows] for k, v in full.items()}
    fwd = Forward(policy=lambda b, r=rows: (jnp.asarray(logps[r]), {}), totals=totals)
    parts += float(obj.loss(fwd, micro)[0])
  assert parts / n == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("kind", ["sigmoid", "orpo"])
def test_padding_pairs_count_for_nothing(kind):
  batch, logps, _, _ = _orpo_case(seed=4)
  ref = logps * 1.1
  loss, metrics = _ours(kind, logps, ref, batch)
  pad = lambda a: np.concatenate([a, np.zeros((2,) + a.shape[1:], a.dtype)])  # noqa: E731
  loss2, metrics2 = _ours(kind, pad(logps), pad(ref), {k: pad(v) for k, v in batch.items()})
  assert np.isfinite(loss2)
  assert loss2 == pytest.approx(loss, abs=1e-6)
  assert metrics2 == pytest.approx(metrics, abs=1e-6)
