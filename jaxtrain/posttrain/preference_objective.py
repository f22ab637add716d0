"""`train.method = "dpo"`: pairwise preference training on {prompt, chosen, rejected} records.

Batches are `[pairs, 2, seq_len]` (axis 1: chosen, rejected) of the usual contract keys, built
by `data/preference.py` (one unpacked row per completion, the prompt repeated); with
`preference.reference = "precomputed"` they also carry `ref_logps` `[pairs, 2]` from the
records. The loss is a mean over the pairs of the batch (padding pairs excluded), so
micro-batches split along pairs add up exactly.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxtrain.posttrain.objective import CONTRACT, BatchField, Forward, Objective
from jaxtrain.posttrain.preference import REFERENCE_FREE, pair_losses, reward_metrics


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

  @staticmethod
  def _valid(batch):
    """1.0 for real pairs, 0.0 for the padding pairs of a short final batch."""
    return (jnp.sum(batch["loss_mask"][:, 0], axis=-1) > 0).astype(jnp.float32)

  def extra_metrics(self) -> tuple[str, ...]:
    return ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected")

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
    metrics = {k: (v if k == "rewards/accuracies" else v) for k, v in metrics.items()}
    metrics.update({"logps/chosen": jnp.sum(seq[:, 0] * valid), "logps/rejected": jnp.sum(seq[:, 1] * valid)})
    # Padding pairs have no tokens: their log-probs and rewards are 0 and add nothing but the
    # accuracy's strict comparison and the losses' constants, which `valid` removes.
    return jnp.sum(losses * valid), aux, metrics
