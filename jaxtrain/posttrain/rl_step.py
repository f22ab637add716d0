"""The jitted pieces of a GRPO step: per-token log-probabilities of completions (under the
policy, and under the frozen reference), and the policy update (loss of `rl_loss`, gradient accumulation over micro-batches, optimizer, MoE router
terms as in SFT).

Batch keys (`RL_KEYS`), rows `[N, T]` from `rollout.training_batch`: input_ids, target_ids,
segment_ids, positions, mask (completion tokens that get loss), old_logps (the rollout
policy's log-probabilities; used when grpo.num_iterations > 1), ref_logps (the reference
policy's; used when grpo.beta > 0), and advantages `[N]`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtrain.posttrain import rl_loss
from jaxtrain.posttrain.parts import ModelParts
from jaxtrain.train.loss import token_losses
from jaxtrain.train.state import TrainState
from jaxtrain.train.step import _merge_micro_aux, _moe_terms, moe_metrics, split_micro_batches

ROW_KEYS = ("input_ids", "target_ids", "segment_ids", "positions", "mask", "old_logps", "ref_logps")
RL_KEYS = ROW_KEYS + ("advantages",)


def token_logps(model, batch, *, temperature: float, vocab_chunk: int):
  """log p(target) `[N, T]` under softmax(logits / temperature), and the MoE aux statistics."""
  h, aux, _ = model.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  w = model.head_weight(h.dtype) / jnp.asarray(temperature, h.dtype)
  return -token_losses(h, w, batch["target_ids"], vocab_chunk=vocab_chunk), aux


def make_logp_fn(parts: ModelParts, train_cfg, grpo_cfg) -> Callable:
  """`logps(params, frozen, model_state, batch)` under the policy (the LoRA base, if any, is
  `frozen`)."""
  def logps(params, frozen, model_state, batch):
    return token_logps(parts.policy(params, frozen, model_state), batch, temperature=grpo_cfg.temperature,
                       vocab_chunk=train_cfg.loss_vocab_chunk)[0]

  return logps


def make_ref_logp_fn(parts: ModelParts, train_cfg, grpo_cfg) -> Callable:
  """`logps(frozen, model_state, batch)` under the reference: the base model over the frozen
  arrays (LoRA: adapters disabled, no copy; full fine-tuning: the starting weights)."""
  def logps(frozen, model_state, batch):
    return token_logps(parts.reference(frozen, model_state), batch, temperature=grpo_cfg.temperature,
                       vocab_chunk=train_cfg.loss_vocab_chunk)[0]

  return logps


def make_grpo_step(parts: ModelParts, model_cfg, train_cfg, grpo_cfg, tx: optax.GradientTransformation,
                   lr_schedule: Callable) -> Callable:
  g = grpo_cfg
  num_micro = train_cfg.micro_batches
  use_old = g.num_iterations > 1
  eps = dict(epsilon_low=g.epsilon_low, epsilon_high=g.epsilon_high)

  def train_step(state: TrainState, batch: dict[str, Any]):
    batch = dict(batch, weights=rl_loss.token_weights(batch["mask"], g.loss_type, g.max_new_tokens))

    def loss_fn(params, micro):
      logps, aux = token_logps(parts.policy(params, state.frozen, state.model_state), micro,
                               temperature=g.temperature, vocab_chunk=train_cfg.loss_vocab_chunk)
      old = micro["old_logps"] if use_old else jax.lax.stop_gradient(logps)
      per_token, kl, ratio = rl_loss.per_token_loss(logps, old, micro["ref_logps"], micro["advantages"], beta=g.beta,
                                                   **eps)
      loss = jnp.sum(per_token * micro["weights"])
      moe_total, _, _ = _moe_terms(aux, model_cfg)
      mask = micro["mask"].astype(jnp.float32)
      sums = {"kl": jnp.sum(kl * mask), "tokens": jnp.sum(mask),
              **rl_loss.clip_counts(ratio, micro["advantages"], mask, **eps)}
      return loss + moe_total / num_micro, (loss, sums, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
      (_, (loss, sums, aux)), grads = grad_fn(state.params, batch)
    else:
      def accumulate(carry, mb):
        grads_acc, loss_acc, sums_acc = carry
        (_, (loss, sums, aux)), grads = grad_fn(state.params, mb)
        return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss, jax.tree.map(jnp.add, sums_acc, sums)), aux

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("kl", "clip/low", "clip/high", "clip/region", "tokens")}
      (grads, loss, sums), auxes = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32), zero_sums),
                                                split_micro_batches(batch, num_micro))
      aux = _merge_micro_aux(auxes)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    tokens = jnp.maximum(sums.pop("tokens"), 1.0)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step),
               **{k: v / tokens for k, v in sums.items()}, **moe_metrics(aux)}
    model_state = state.model_state
    if model_state is not None and aux and model_cfg.has_router_state and model_cfg.router_bias_update_rate:
      model = parts.policy(state.params, state.frozen, model_state)
      model.update_router_bias(jax.lax.stop_gradient(aux["load"]), model_cfg.router_bias_update_rate)
      model_state = nnx.split(model, nnx.Param, ...)[2]
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), metrics

  return train_step
