"""Mixture-of-experts feed-forward layer: router (fp32), routed experts, optional shared
experts, and the router's auxiliary losses and load statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.adapters import adapter
from jaxtrain.models.config import ModelConfig
from jaxtrain.models.layers import activation, cast, dtype_of, glu, param, state_variable
from jaxtrain.models.mlp import MLP
from jaxtrain.parallel.moe import ExpertLoRA, routed_experts
from jaxtrain.parallel.rules import constrain


def _group_limited(choice, n_group: int, topk_group: int):
  """Masks (-inf) the experts outside each token's `topk_group` best groups; a group's score is
  the sum of its two best expert scores (DeepSeek-V3 node-limited routing)."""
  N, X = choice.shape
  grouped = choice.reshape(N, n_group, X // n_group)
  group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [N, G]
  _, top_groups = jax.lax.top_k(group_scores, topk_group)
  keep = jnp.any(top_groups[:, :, None] == jnp.arange(n_group)[None, None, :], axis=1)  # [N, G]
  return jnp.where(jnp.repeat(keep, X // n_group, axis=-1), choice, -jnp.inf)


def route(logits, cfg: ModelConfig, score_bias=None):
  """Router logits `[N, X]` (fp32) -> (top-k expert ids `[N, K]`, weights `[N, K]`, probs `[N, X]`).

  `probs` are the normalised affinities the balance losses use. routers:
  - softmax_topk: softmax, top-k, optional renormalisation (Qwen, Mixtral).
  - topk_softmax: top-k logits, softmax over them (GPT-OSS).
  - sigmoid_group: sigmoid scores; experts are *selected* by scores + `score_bias` (the
    aux-loss-free correction bias, selection only) within the `topk_group` best of `n_group`
    groups, and *weighted* by their plain scores, optionally renormalised (DeepSeek-V3).
  Every router's weights are finally multiplied by `routed_scaling_factor`."""
  K = cfg.num_experts_per_tok
  if cfg.router == "softmax_topk":
    probs = jax.nn.softmax(logits, axis=-1)
    weights, ids = jax.lax.top_k(probs, K)
    if cfg.norm_topk_prob:
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  elif cfg.router == "topk_softmax":
    top, ids = jax.lax.top_k(logits, K)
    weights, probs = jax.nn.softmax(top, axis=-1), jax.nn.softmax(logits, axis=-1)
  elif cfg.router == "sigmoid_group":
    scores = jax.nn.sigmoid(logits)
    choice = scores if score_bias is None else scores + jax.lax.stop_gradient(score_bias).astype(scores.dtype)
    if cfg.topk_group < cfg.n_group:
      choice = _group_limited(choice, cfg.n_group, cfg.topk_group)
    _, ids = jax.lax.top_k(choice, K)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    if cfg.norm_topk_prob:
      weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
  else:
    raise NotImplementedError(f"router {cfg.router!r}")
  if cfg.routed_scaling_factor != 1.0:
    weights = weights * cfg.routed_scaling_factor
  return ids, weights, probs


def load_balancing_loss(probs, ids, valid, num_experts):
  """Switch-style auxiliary loss as Hugging Face computes it: X * sum_i f_i * P_i, with f_i the
  fraction of tokens that picked expert i (summed over the k choices) and P_i the mean router
  probability of expert i, both over valid tokens."""
  v = valid.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(v), 1.0)
  picked = jnp.sum(jax.nn.one_hot(ids, num_experts, dtype=jnp.float32), axis=1)  # [N, X]
  f = jnp.sum(picked * v[:, None], axis=0) / n
  p = jnp.sum(probs * v[:, None], axis=0) / n
  return num_experts * jnp.sum(f * p)


def sequence_balance_loss(probs, ids, segment_ids, num_experts):
  """DeepSeek-V3's sequence-wise balance loss, per *document* and averaged over documents:
  sum_i f_i * P_i with f_i = X / (K * T_d) * (tokens of the document that picked expert i) and
  P_i the document's mean normalised affinity of expert i. A document is a (row, segment id)
  pair, so packing several documents into a row gives each its own term, as if unpacked;
  segment 0 (padding) is ignored."""
  K = ids.shape[1]
  B, T = segment_ids.shape
  valid = (segment_ids != 0).reshape(-1)
  doc = (jnp.arange(B, dtype=jnp.int32)[:, None] * (T + 1) + segment_ids).reshape(-1)  # [N]
  num_docs = B * (T + 1)
  picked = jnp.sum(jax.nn.one_hot(ids, num_experts, dtype=jnp.float32), axis=1)  # [N, X]
  v = valid.astype(jnp.float32)[:, None]
  counts = jax.ops.segment_sum(picked * v, doc, num_segments=num_docs)  # [D, X]
  prob_sums = jax.ops.segment_sum(probs * v, doc, num_segments=num_docs)  # [D, X]
  n = jax.ops.segment_sum(v[:, 0], doc, num_segments=num_docs)  # [D]
  per_doc = num_experts / K * jnp.sum(counts * prob_sums, axis=-1) / jnp.maximum(n, 1.0) ** 2
  present = (n > 0).astype(jnp.float32)
  return jnp.sum(per_doc * present) / jnp.maximum(jnp.sum(present), 1.0)


def router_z_loss(logits, valid):
  v = valid.astype(jnp.float32)
  z = jax.nn.logsumexp(logits, axis=-1)
  return jnp.sum(z * z * v) / jnp.maximum(jnp.sum(v), 1.0)


class MoE(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    E, X, I = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    pd, std = dtype_of(cfg.param_dtype), cfg.initializer_range
    self.cfg = cfg
    self.router = param(rngs, (E, X), ("embed", "router"), std=std, dtype=pd)
    if cfg.router == "topk_softmax":
      self.router_bias = param(None, (X,), ("router",), init="zeros", dtype=pd)
    if cfg.has_router_state:
      self.score_bias = state_variable((X,), ("router",))  # selection only; updated by the train step
    self.gate_up = param(rngs, (X, E, 2, I), ("expert", "embed", None, "moe_mlp"), std=std, dtype=pd)
    self.down = param(rngs, (X, I, E), ("expert", "moe_mlp", "embed"), std=std, dtype=pd)
    if cfg.expert_bias:
      self.gate_up_bias = param(None, (X, 2, I), ("expert", None, "moe_mlp"), init="zeros", dtype=pd)
      self.down_bias = param(None, (X, E), ("expert", "embed"), init="zeros", dtype=pd)
    if cfg.shared_expert_intermediate_size:
      self.shared = MLP(E, cfg.shared_expert_intermediate_size, act=cfg.activation, std=std,
                        param_dtype=cfg.param_dtype, rngs=rngs, fp8=cfg.fp8_gemms)
      if cfg.shared_expert_gate:
        self.shared_gate = param(rngs, (E, 1), ("embed", None), std=std, dtype=pd)

  def __call__(self, x, segment_ids):
    cfg = self.cfg
    B, T, E = x.shape
    tokens = x.reshape(B * T, E)
    valid = segment_ids.reshape(-1) != 0
    logits = tokens.astype(jnp.float32) @ self.router[...].astype(jnp.float32)
    if cfg.router == "topk_softmax":
      logits = logits + self.router_bias[...].astype(jnp.float32)
    ids, weights, probs = route(logits, cfg, self.score_bias[...] if cfg.has_router_state else None)
    extra = {}
    if cfg.expert_activation != "glu":
      extra["glu"] = glu(cfg.expert_activation, cfg.activation, alpha=cfg.swiglu_alpha, limit=cfg.swiglu_limit)
    if cfg.expert_bias:
      extra.update(gate_up_bias=cast(self.gate_up_bias[...], x.dtype), down_bias=cast(self.down_bias[...], x.dtype))
    gu_lora, dn_lora = adapter(self, "gate_up"), adapter(self, "down")
    if gu_lora is not None:  # per-expert adapters, applied inside the grouped matmuls
      extra["lora"] = ExpertLoRA(*(cast(v[...], x.dtype) for v in (gu_lora.a, gu_lora.b, dn_lora.a, dn_lora.b)),
                                 scale=gu_lora.scale)
    out, load, dropped = routed_experts(
        tokens, ids, weights, valid, cast(self.gate_up[...], x.dtype), cast(self.down[...], x.dtype),
        act=activation(cfg.activation), mode=cfg.moe_impl, capacity_factor=cfg.capacity_factor,
        impl=cfg.gmm_impl, fp8=cfg.fp8_gemms, **extra)
    y = out.reshape(B, T, E)
    if cfg.shared_expert_intermediate_size:
      shared = self.shared(x)
      if cfg.shared_expert_gate:
        shared = jax.nn.sigmoid(x @ cast(self.shared_gate[...], x.dtype)) * shared
      y = y + shared
    aux = {
        "aux_loss": load_balancing_loss(probs, ids, valid, cfg.num_experts),
        "seq_aux_loss": sequence_balance_loss(probs, ids, segment_ids, cfg.num_experts),
        "z_loss": router_z_loss(logits, valid),
        "load": load,
        "dropped": dropped,
        "routed": jnp.sum(valid).astype(jnp.int32) * cfg.num_experts_per_tok,
    }
    return constrain(y, ("act_batch", "act_seq", "act_embed")), aux
