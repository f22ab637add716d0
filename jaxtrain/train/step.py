"""The jitted train and eval steps.

Loss = sum over loss tokens of -log p(target) / (number of loss tokens in the whole global
batch), so gradient accumulation, packing and data parallelism give the exact same value as
one big batch. MoE auxiliary losses are averaged over MoE layers and micro-batches.

Models with non-trainable state (`TrainState.model_state`: the sigmoid_group routers'
score-correction biases) get it updated after the optimizer step from the step's expert loads
(aux-loss-free balancing, `Decoder.update_router_bias`); the optimizer never sees it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtrain.parallel.rules import constrain
from jaxtrain.train.freeze import stop_frozen
from jaxtrain.train.loss import token_losses
from jaxtrain.train.state import TrainState

BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


def constrain_batch(batch):
  """Text keys sharded by rows and sequence; other keys (a vision-language model's per-row
  vision inputs, `train/vision_batch.py`) by rows."""
  out = {k: constrain(batch[k], ("act_batch", "act_seq")) for k in BATCH_KEYS}
  for k in batch.keys() - set(BATCH_KEYS):
    out[k] = constrain(batch[k], ("act_batch",) + (None,) * (batch[k].ndim - 1))
  return out


def _merge(graphdef, params, model_state=None):
  return nnx.merge(graphdef, params) if model_state is None else nnx.merge(graphdef, params, model_state)


def _forward_loss(graphdef, params, batch, *, vocab_chunk: int, model_state=None):
  """(sum of token losses, aux stats) for one (micro-)batch."""
  model = _merge(graphdef, params, model_state)
  extra = {k: v for k, v in batch.items() if k not in BATCH_KEYS}  # vision inputs
  h, aux, _ = model.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"],
                                  positions=batch["positions"], **extra)
  losses = token_losses(h, model.head_weight(h.dtype), batch["target_ids"], vocab_chunk=vocab_chunk)
  mask = batch["loss_mask"].astype(jnp.float32)
  return jnp.sum(losses * mask), aux


def _moe_terms(aux, model_cfg):
  if not aux:
    zero = jnp.zeros((), jnp.float32)
    return zero, zero, zero
  aux_loss, z_loss = jnp.mean(aux["aux_loss"]), jnp.mean(aux["z_loss"])
  total = model_cfg.aux_loss_weight * aux_loss + model_cfg.z_loss_weight * z_loss
  if model_cfg.seq_aux_loss_weight:
    total = total + model_cfg.seq_aux_loss_weight * jnp.mean(aux["seq_aux_loss"])
  return total, aux_loss, z_loss


def moe_metrics(aux) -> dict:
  """Per-MoE-layer expert load statistics and the dropped-assignment fraction."""
  if not aux:
    return {}
  load = aux["load"].astype(jnp.float32)  # [layers, experts]
  mean = jnp.mean(load, axis=-1)
  return {
      "moe/load_min": jnp.min(load, axis=-1),
      "moe/load_max": jnp.max(load, axis=-1),
      "moe/load_cv": jnp.std(load, axis=-1) / jnp.maximum(mean, 1e-9),
      "moe/dropped_frac": jnp.sum(aux["dropped"]) / jnp.maximum(jnp.sum(aux["routed"]), 1),
      "moe/aux_loss": jnp.mean(aux["aux_loss"]),
      "moe/seq_aux_loss": jnp.mean(aux["seq_aux_loss"]),
      "moe/z_loss": jnp.mean(aux["z_loss"]),
  }


def split_micro_batches(batch, num_micro: int):
  """[B, T] -> [num_micro, B / num_micro, T] taking rows m, m + num_micro, ... for micro-batch m,
  so each device's rows stay on that device."""
  def split(x):
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def make_train_step(graphdef, model_cfg, train_cfg, tx: optax.GradientTransformation,
                    lr_schedule: Callable) -> Callable:
  num_micro = train_cfg.micro_batches
  vocab_chunk = train_cfg.loss_vocab_chunk

  def train_step(state: TrainState, batch: dict[str, Any]):
    batch = constrain_batch(batch)
    total_tokens = jnp.maximum(jnp.sum(batch["loss_mask"]).astype(jnp.float32), 1.0)

    def loss_fn(params, micro):
      params = stop_frozen(params, model_cfg.freeze)
      loss_sum, aux = _forward_loss(graphdef, params, micro, vocab_chunk=vocab_chunk, model_state=state.model_state)
      moe_total, _, _ = _moe_terms(aux, model_cfg)
      return loss_sum / total_tokens + moe_total / num_micro, (loss_sum, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
      (_, (loss_sum, aux)), grads = grad_fn(state.params, batch)
    else:
      micro = split_micro_batches(batch, num_micro)

      def accumulate(carry, mb):
        grads_acc, loss_acc = carry
        (_, (loss_sum, aux)), grads = grad_fn(state.params, mb)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        return (grads_acc, loss_acc + loss_sum), aux

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, loss_sum), auxes = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32)), micro)
      aux = _merge_micro_aux(auxes)

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    _, aux_loss, z_loss = _moe_terms(aux, model_cfg)
    metrics = {
        "loss": loss_sum / total_tokens,
        "grad_norm": grad_norm,
        "lr": lr_schedule(state.step),
        "loss_tokens": total_tokens,
        **moe_metrics(aux),
    }
    model_state = state.model_state
    rate = model_cfg.router_bias_update_rate
    if model_state is not None and aux and model_cfg.has_router_state and rate:
      model = _merge(graphdef, state.params, model_state)
      model.update_router_bias(jax.lax.stop_gradient(aux["load"]), rate)
      model_state = nnx.split(model, nnx.Param, ...)[2]
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return new_state, metrics

  return train_step


def _merge_micro_aux(auxes):
  """Scan-stacked per-micro-batch aux `[M, layers, ...]` -> one batch's worth."""
  if not auxes:
    return auxes
  return {
      "aux_loss": jnp.mean(auxes["aux_loss"], axis=0),
      "seq_aux_loss": jnp.mean(auxes["seq_aux_loss"], axis=0),
      "z_loss": jnp.mean(auxes["z_loss"], axis=0),
      "load": jnp.sum(auxes["load"], axis=0),
      "dropped": jnp.sum(auxes["dropped"], axis=0),
      "routed": jnp.sum(auxes["routed"], axis=0),
  }


def make_eval_step(graphdef, train_cfg) -> Callable:
  vocab_chunk = train_cfg.loss_vocab_chunk

  def eval_step(params, batch, model_state=None):
    batch = constrain_batch(batch)
    loss_sum, _ = _forward_loss(graphdef, params, batch, vocab_chunk=vocab_chunk, model_state=model_state)
    return loss_sum, jnp.sum(batch["loss_mask"]).astype(jnp.float32)

  return eval_step
