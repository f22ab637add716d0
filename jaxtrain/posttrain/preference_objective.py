"""`train.method = "dpo"`: pairwise preference training on {prompt, chosen, rejected} records.

Batches are `[pairs, 2, seq_len]` (axis 1: chosen, rejected) of the usual contract keys, built
by `data/preference.py` (one unpacked row per completion, the prompt repeated); with
`preference.reference = "precomputed"` they also carry `ref_logps` `[pairs, 2]` from the
records. The loss is a mean over the pairs of the batch (padding pairs excluded), so
micro-batches split along pairs add up exactly.

ORPO adds to its per-pair odds-ratio term the NLL of the chosen sequences as TRL computes it: a
mean over all chosen tokens of the batch, the prompt's included (TRL and the ORPO authors' code;
`preference.orpo_prompt_nll=false` keeps the completion only). Its token count comes from the
whole batch (`totals`), so accumulation and data parallelism give one big batch's value (TRL
averages per-device micro-batch means instead; the same for one batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrain.posttrain.objective import CONTRACT, BatchField, Forward, Objective
from jaxtrain.posttrain.preference import REFERENCE_FREE, orpo_log_odds, pair_losses, reward_metrics


class PreferenceObjective(Objective):
  name = "dpo"

  @property
  def pc(self):
    return self.config.preference

  def needs_reference(self) -> bool:
    return self.pc.loss not in REFERENCE_FREE and self.pc.reference == "base"

  def batch_fields(self, config) -> dict[str, BatchField]:
    shape = (config.train.global_batch, 2, config.data.seq_len)
    fields = {k: BatchField(shape, "int32", ("act_batch", None, "act_seq")) for k in CONTRACT}
    if self.pc.loss not in REFERENCE_FREE and self.pc.reference == "precomputed":
      fields["ref_logps"] = BatchField(shape[:2], "float32", ("act_batch", None))
    return fields

  def pipeline(self, config, split, tokenizer, process_index, process_count):
    from jaxtrain.data.preference import build_preference_pipeline
    return build_preference_pipeline(config, split=split, tokenizer=tokenizer, process_index=process_index,
                                     process_count=process_count,
                                     with_reference=self.pc.loss not in REFERENCE_FREE and self.pc.reference == "precomputed")

  def normalizer(self, batch):
    return jnp.maximum(jnp.sum(self._valid(batch)), 1.0)

  def totals(self, batch) -> dict:
    if self.pc.loss != "orpo":
      return {}
    return {"pairs": self.normalizer(batch), "nll_tokens": jnp.maximum(jnp.sum(self._nll_mask(batch)), 1.0)}

  def _nll_mask(self, batch):
    """[P, T] float: ORPO's NLL positions in the chosen rows: every position whose target is a
    real token (prompt + completion), or with orpo_prompt_nll=false the completion's (loss_mask)."""
    if not self.pc.orpo_prompt_nll:
      return batch["loss_mask"][:, 0].astype(jnp.float32)
    seg = batch["segment_ids"][:, 0]  # rows are unpacked: one document, then padding
    next_real = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1) > 0
    return ((seg > 0) & next_real).astype(jnp.float32)

  @staticmethod
  def _valid(batch):
    """1.0 for real pairs, 0.0 for the padding pairs of a short final batch."""
    return (jnp.sum(batch["loss_mask"][:, 0], axis=-1) > 0).astype(jnp.float32)

  def extra_metrics(self) -> tuple[str, ...]:
    orpo = ("nll_loss", "log_odds_ratio", "log_odds_chosen") if self.pc.loss == "orpo" else ()
    return ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected") + orpo

  def loss(self, fwd: Forward, batch):
    pc = self.pc
    mask = batch["loss_mask"].astype(jnp.float32)  # [P, 2, T]
    logps, aux = fwd.policy(batch)
    seq = jnp.sum(logps * mask, axis=-1)  # [P, 2]
    lengths = jnp.sum(mask, axis=-1)
    ref = None
    if pc.loss not in REFERENCE_FREE:
      if "ref_logps" in batch:
        ref = batch["ref_logps"].astype(jnp.float32)
      elif fwd.reference is not None:
        ref = jnp.sum(fwd.reference(batch) * mask, axis=-1)
      else:
        raise ValueError(f"preference.loss={pc.loss!r} needs reference log-probabilities and the run has none")
    losses, chosen_rewards, rejected_rewards = pair_losses(
        pc.loss, seq[:, 0], seq[:, 1], lengths[:, 0], lengths[:, 1],
        None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
        beta=pc.beta, label_smoothing=pc.label_smoothing, simpo_gamma=pc.simpo_gamma)
    valid = self._valid(batch)
    metrics = reward_metrics(chosen_rewards, rejected_rewards)
    metrics["rewards/accuracies"] = jnp.sum((chosen_rewards > rejected_rewards) * valid)
    # logps/*: summed log-probabilities, or per-token averages for the length-normalised losses
    # (simpo, orpo), as TRL's DPO / CPO / ORPO trainers log them
    shown = seq / jnp.maximum(lengths, 1.0) if pc.loss in REFERENCE_FREE else seq
    metrics.update({"logps/chosen": jnp.sum(shown[:, 0] * valid), "logps/rejected": jnp.sum(shown[:, 1] * valid)})
    # Padding pairs have no tokens: their log-probs and rewards are 0 and add nothing but the
    # accuracy's strict comparison and the losses' constants, which `valid` removes.
    loss_sum = jnp.sum(losses * valid)
    if pc.loss == "orpo":
      totals = fwd.totals or self.totals(batch)  # no totals given: `batch` is the whole batch
      # sum over this micro-batch's chosen tokens, scaled so that / pairs = / chosen tokens
      nll = -jnp.sum(logps[:, 0] * self._nll_mask(batch)) * (totals["pairs"] / totals["nll_tokens"])
      log_odds = orpo_log_odds(seq[:, 0], seq[:, 1], lengths[:, 0], lengths[:, 1])
      loss_sum = loss_sum + nll
      metrics.update({"nll_loss": nll, "log_odds_ratio": jnp.sum(jax.nn.log_sigmoid(log_odds) * valid),
                      "log_odds_chosen": jnp.sum(log_odds * valid)})
    return loss_sum, aux, metrics
