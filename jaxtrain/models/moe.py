"""Mixture-of-experts feed-forward layer: router (fp32), routed experts, optional shared
experts, and the router's auxiliary losses and load statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.models.config import ModelConfig
from jaxtrain.models.layers import activation, cast, dtype_of, param
from jaxtrain.models.mlp import MLP
from jaxtrain.parallel.expert import routed_experts
from jaxtrain.parallel.rules import constrain


def route(logits, cfg: ModelConfig):
  """Router logits `[N, X]` (fp32) -> (top-k expert ids `[N, K]`, weights `[N, K]`, probs `[N, X]`)."""
  K = cfg.num_experts_per_tok
  if cfg.router == "softmax_topk":
    probs = jax.nn.softmax(logits, axis=-1)
    weights, ids = jax.lax.top_k(probs, K)
    if cfg.norm_topk_prob:
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return ids, weights, probs
  if cfg.router == "topk_softmax":
    top, ids = jax.lax.top_k(logits, K)
    return ids, jax.nn.softmax(top, axis=-1), jax.nn.softmax(logits, axis=-1)
  raise NotImplementedError(f"router {cfg.router!r}")


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
    self.gate_up = param(rngs, (X, E, 2, I), ("expert", "embed", None, "moe_mlp"), std=std, dtype=pd)
    self.down = param(rngs, (X, I, E), ("expert", "moe_mlp", "embed"), std=std, dtype=pd)
    if cfg.shared_expert_intermediate_size:
      self.shared = MLP(E, cfg.shared_expert_intermediate_size, act=cfg.activation, std=std,
                        param_dtype=cfg.param_dtype, rngs=rngs)
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
    ids, weights, probs = route(logits, cfg)
    out, load, dropped = routed_experts(
        tokens, ids, weights, valid, cast(self.gate_up[...], x.dtype), cast(self.down[...], x.dtype),
        act=activation(cfg.activation), mode=cfg.moe_impl, capacity_factor=cfg.capacity_factor,
        impl=cfg.gmm_impl)
    y = out.reshape(B, T, E)
    if cfg.shared_expert_intermediate_size:
      shared = self.shared(x)
      if cfg.shared_expert_gate:
        shared = jax.nn.sigmoid(x @ cast(self.shared_gate[...], x.dtype)) * shared
      y = y + shared
    aux = {
        "aux_loss": load_balancing_loss(probs, ids, valid, cfg.num_experts),
        "z_loss": router_z_loss(logits, valid),
        "load": load,
        "dropped": dropped,
        "routed": jnp.sum(valid).astype(jnp.int32) * cfg.num_experts_per_tok,
    }
    return constrain(y, ("act_batch", "act_seq", "act_embed")), aux
