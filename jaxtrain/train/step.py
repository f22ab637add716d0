"""The jitted train and eval steps.

The objective (`train.method`, jaxtrain/posttrain/objective.py) gives the loss of a
(micro-)batch as a sum and the global count it is divided by (for SFT: -log p(target) summed
over loss tokens / the number of loss tokens in the whole global batch), so gradient
accumulation, packing and data parallelism give the exact same value as one big batch. MoE
auxiliary losses are averaged over MoE layers and micro-batches.

Models with non-trainable state (`TrainState.model_state`: the sigmoid_group routers'
score-correction biases) get it updated after the optimizer step from the step's expert loads
(aux-loss-free balancing, `Decoder.update_router_bias`); the optimizer never sees it. Frozen
parameters (`TrainState.frozen`: a LoRA base, or a preference objective's reference) enter the
models as `ModelParts` says and get no gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtrain.models.vision.inputs import input_axes
from jaxtrain.models.vlm import VISION_KEYS
from jaxtrain.parallel.rules import constrain
from jaxtrain.posttrain.objective import Forward, Objective
from jaxtrain.posttrain.parts import ModelParts
from jaxtrain.train.freeze import stop_frozen
from jaxtrain.train.loss import token_losses
from jaxtrain.train.state import TrainState

VISION_INPUTS = tuple(k for keys in VISION_KEYS.values() for k in keys) + ("rope_positions",)
BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


def token_logps(model, batch, *, vocab_chunk: int):
  """(log p(target) fp32 shaped like `batch["input_ids"]`, MoE aux) under `model`; leading
  dimensions beyond [rows, T] are flattened for the forward pass and restored."""
  shape = batch["input_ids"].shape
  flat = {k: batch[k].reshape(-1, shape[-1]) for k in ("input_ids", "target_ids", "segment_ids", "positions")}
  vision = {k: batch[k] for k in VISION_INPUTS if k in batch}  # a vision-language model's rows (SFT)
  h, aux, _ = model.hidden_states(flat["input_ids"], segment_ids=flat["segment_ids"], positions=flat["positions"],
                                  **vision)
  losses = token_losses(h, model.head_weight(h.dtype), flat["target_ids"], vocab_chunk=vocab_chunk)
  return -losses.reshape(shape), aux


def make_forward(parts: ModelParts, params, frozen, model_state, *, vocab_chunk: int,
                 totals: dict | None = None) -> Forward:
  def policy(batch):
    return token_logps(parts.policy(params, frozen, model_state), batch, vocab_chunk=vocab_chunk)

  reference = None
  if parts.ref_graphdef is not None and frozen is not None:
    def reference(batch):
      logps, _ = token_logps(parts.reference(jax.lax.stop_gradient(frozen), model_state), batch,
                             vocab_chunk=vocab_chunk)
      return jax.lax.stop_gradient(logps)
  return Forward(policy=policy, reference=reference, totals=totals or {})


def _constrain_batch(batch, fields):
  if fields is None:  # the SFT contract, plus the vision inputs when the batch has them
    out = {k: constrain(batch[k], ("act_batch", "act_seq")) for k in BATCH_KEYS}
    return out | {k: constrain(batch[k], input_axes(k, batch[k].ndim)) for k in VISION_INPUTS if k in batch}
  return {k: constrain(batch[k], fields[k].axes) for k in fields}


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
  load = aux["load"].astype(jnp.float32)  # [layers, experts]: token copies routed to each expert
  mean = jnp.mean(load, axis=-1)
  return {
      "moe/expert_load": load / jnp.maximum(jnp.sum(load, axis=-1, keepdims=True), 1e-9),  # fractions per layer
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


def make_train_step(graphdef, model_cfg, train_cfg, tx: optax.GradientTransformation, lr_schedule: Callable, *,
                    objective: Objective | None = None, parts: ModelParts | None = None,
                    fields: dict | None = None) -> Callable:
  """`train_step(state, batch) -> (state, metrics)`. `objective` defaults to SFT, `parts` to the
  plain model `graphdef`, `fields` (the objective's batch fields) to the SFT contract keys."""
  num_micro = train_cfg.micro_batches
  vocab_chunk = train_cfg.loss_vocab_chunk
  objective = objective or Objective()
  parts = parts or ModelParts(graphdef)

  def train_step(state: TrainState, batch: dict[str, Any]):
    batch = _constrain_batch(batch, fields)
    normalizer = objective.normalizer(batch)
    totals = objective.totals(batch)

    def loss_fn(params, micro):
      params = stop_frozen(params, model_cfg.freeze)
      fwd = make_forward(parts, params, state.frozen, state.model_state, vocab_chunk=vocab_chunk, totals=totals)
      loss_sum, aux, sums = objective.loss(fwd, micro)
      moe_total, _, _ = _moe_terms(aux, model_cfg)
      return loss_sum / normalizer + moe_total / num_micro, (loss_sum, aux, sums)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
      (_, (loss_sum, aux, sums)), grads = grad_fn(state.params, batch)
    else:
      micro = split_micro_batches(batch, num_micro)

      def accumulate(carry, mb):
        grads_acc, loss_acc, sums_acc = carry
        (_, (loss_sum, aux, sums)), grads = grad_fn(state.params, mb)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        return (grads_acc, loss_acc + loss_sum, jax.tree.map(jnp.add, sums_acc, sums)), aux

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      sums_shape = jax.eval_shape(lambda p, mb: loss_fn(p, mb)[1][2], state.params, jax.tree.map(lambda x: x[0], micro))
      sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
      (grads, loss_sum, sums), auxes = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32), sums0), micro)
      aux = _merge_micro_aux(auxes)

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    _, aux_loss, z_loss = _moe_terms(aux, model_cfg)
    metrics = {
        "loss": loss_sum / normalizer,
        "grad_norm": grad_norm,
        "lr": lr_schedule(state.step),
        "loss_tokens": jnp.sum(batch["loss_mask"]).astype(jnp.float32),
        **{k: v / normalizer for k, v in sums.items()},
        **moe_metrics(aux),
    }
    model_state = state.model_state
    rate = model_cfg.router_bias_update_rate
    if model_state is not None and aux and model_cfg.has_router_state and rate:
      model = parts.policy(state.params, state.frozen, model_state)
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


def make_eval_step(graphdef, train_cfg, *, objective: Objective | None = None, parts: ModelParts | None = None,
                   fields: dict | None = None) -> Callable:
  """`eval_step(params, batch, model_state=None, frozen=None) -> (loss sum, normalizer)`."""
  vocab_chunk = train_cfg.loss_vocab_chunk
  objective = objective or Objective()
  parts = parts or ModelParts(graphdef)

  def eval_step(params, batch, model_state=None, frozen=None):
    batch = _constrain_batch(batch, fields)
    fwd = make_forward(parts, params, frozen, model_state, vocab_chunk=vocab_chunk, totals=objective.totals(batch))
    loss_sum, _, _ = objective.loss(fwd, batch)
    return loss_sum, objective.normalizer(batch)

  return eval_step
