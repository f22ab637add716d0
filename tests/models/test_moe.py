import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxtrain.models.moe import load_balancing_loss, route, sequence_balance_loss
from jaxtrain.parallel import moe
from tests.helpers import tiny_moe

N, E, X, I, K = 40, 8, 4, 6, 2


def _problem(seed=0, skew=0.0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N, E)).astype(np.float32)
  logits = rng.normal(size=(N, X)).astype(np.float32)
  logits[:, 0] += skew
  gate_up = rng.normal(size=(X, E, 2, I)).astype(np.float32) * 0.5
  down = rng.normal(size=(X, I, E)).astype(np.float32) * 0.5
  ids, weights, _ = route(jnp.asarray(logits), tiny_moe(num_experts=X, num_experts_per_tok=K))
  return x, np.asarray(ids), np.asarray(weights), gate_up, down


def _expert(x, gate_up, down, e):
  h = np.einsum("e,eci->ci", x, gate_up[e])
  return (h[0] / (1 + np.exp(-h[0])) * h[1]) @ down[e]


def _naive(x, ids, weights, gate_up, down, keep=None):
  out = np.zeros_like(x)
  for n in range(N):
    for k in range(K):
      if keep is None or keep[n, k]:
        out[n] += weights[n, k] * _expert(x[n], gate_up, down, ids[n, k])
  return out


@pytest.mark.parametrize("impl", ["xla", "blocked"])
def test_dropless_equals_naive_per_token_loop(impl):
  x, ids, w, gate_up, down = _problem(skew=2.0)
  valid = np.ones(N, bool)
  out, load, dropped = moe.dropless(jnp.asarray(x), jnp.asarray(ids), jnp.asarray(w), jnp.asarray(valid),
                                    jnp.asarray(gate_up), jnp.asarray(down), act=jax.nn.silu, impl=impl)
  np.testing.assert_allclose(np.asarray(out), _naive(x, ids, w, gate_up, down), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(load), np.bincount(ids.ravel(), minlength=X))
  assert int(dropped) == 0


def test_padding_tokens_get_no_expert_compute_and_no_load():
  x, ids, w, gate_up, down = _problem(seed=1)
  valid = np.arange(N) < 30
  out, load, _ = moe.dropless(jnp.asarray(x), jnp.asarray(ids), jnp.asarray(w), jnp.asarray(valid),
                              jnp.asarray(gate_up), jnp.asarray(down), act=jax.nn.silu, impl="blocked")
  np.testing.assert_array_equal(np.asarray(out)[30:], 0)
  np.testing.assert_array_equal(np.asarray(load), np.bincount(ids[:30].ravel(), minlength=X))


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0, 2.0])
def test_capacity_drops_exactly_the_assignments_beyond_capacity(capacity_factor):
  x, ids, w, gate_up, down = _problem(seed=2, skew=3.0)  # expert 0 overloaded
  C = max(1, math.ceil(capacity_factor * N * K / X))
  # Token order decides: walk the assignments token-major and fill each expert up to C.
  keep, used = np.zeros((N, K), bool), np.zeros(X, int)
  for n in range(N):
    for k in range(K):
      if used[ids[n, k]] < C:
        keep[n, k], used[ids[n, k]] = True, used[ids[n, k]] + 1
  out, load, dropped = moe.capacity(jnp.asarray(x), jnp.asarray(ids), jnp.asarray(w), jnp.ones(N, bool),
                                    jnp.asarray(gate_up), jnp.asarray(down), act=jax.nn.silu,
                                    capacity_factor=capacity_factor)
  assert int(dropped) == int((~keep).sum())
  np.testing.assert_allclose(np.asarray(out), _naive(x, ids, w, gate_up, down, keep), rtol=1e-5, atol=1e-5)
  if capacity_factor == 2.0:
    assert int(dropped) == 0 or used.max() == C


def test_softmax_topk_router_matches_transformers():
  from transformers import Qwen3MoeConfig
  from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter
  hf_cfg = Qwen3MoeConfig(hidden_size=E, num_experts=X, num_experts_per_tok=K, norm_topk_prob=True)
  router = Qwen3MoeTopKRouter(hf_cfg)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    router.weight.copy_(torch.randn(router.weight.shape, generator=gen))
  h = torch.randn(N, E, generator=gen)
  _, hf_w, hf_ids = router(h)
  logits = h.numpy() @ router.weight.detach().numpy().T
  ids, w, _ = route(jnp.asarray(logits), tiny_moe(num_experts=X, num_experts_per_tok=K))
  np.testing.assert_array_equal(np.asarray(ids), hf_ids.numpy())
  # The logits come from two fp32 matmuls (numpy here, torch inside the router): a few ulps apart.
  np.testing.assert_allclose(np.asarray(w), hf_w.detach().numpy(), rtol=1e-5)


def test_load_balancing_loss_matches_transformers():
  from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
  logits = np.random.default_rng(3).normal(size=(N, X)).astype(np.float32)
  ids, _, probs = route(jnp.asarray(logits), tiny_moe(num_experts=X, num_experts_per_tok=K))
  ours = load_balancing_loss(probs, ids, jnp.ones(N, bool), X)
  theirs = load_balancing_loss_func((torch.tensor(logits),), X, K)
  np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_blocked_path_matches_reference_with_gradients(with_bias):
  """The fused CPU path (kernels.moe_blocked, chosen for gmm impl "blocked") against sort +
  ragged_dot: outputs, loads, and gradients w.r.t. tokens, routing weights, weights and biases,
  with padding tokens and the GPT-OSS gated unit."""
  from jaxtrain.models.layers import glu as make_glu
  x, ids, w, gate_up, down = _problem(seed=5, skew=1.0)
  valid = jnp.asarray(np.arange(N) < N - 7)
  bias = jnp.asarray(np.random.default_rng(6).normal(size=(X, 2, I)), jnp.float32) if with_bias else None
  cot = jnp.asarray(np.random.default_rng(7).normal(size=(N, E)), jnp.float32)
  glu = make_glu("clamped_swiglu", alpha=1.7, limit=0.6) if with_bias else None

  def run(impl):
    def loss(x, w, gu, dn, b):
      out, load, _ = moe.dropless(x, jnp.asarray(ids), w, valid, gu, dn, act=jax.nn.silu, impl=impl,
                                  gate_up_bias=b, glu=glu)
      return jnp.sum(out * cot), load
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))(
        jnp.asarray(x), jnp.asarray(w), jnp.asarray(gate_up), jnp.asarray(down), bias)

  (ref, ref_load), ref_grads = run("xla")
  (out, load), grads = run("blocked")
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  np.testing.assert_array_equal(load, ref_load)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _random_routing(tokens: int, experts: int, k: int, seed: int):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(experts), size=tokens).astype(np.float32)
  ids = np.argsort(-probs, axis=1)[:, :k].astype(np.int32)
  return probs, ids


def test_sequence_balance_loss_is_the_deepseek_formula_per_document():
  """sum_i f_i P_i per document (f_i = X/(K T_d) * picks of expert i, P_i = mean affinity),
  averaged over the documents present; padding (segment 0) counts nowhere."""
  X, K = 6, 2
  segment_ids = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 0]], np.int32)
  probs, ids = _random_routing(segment_ids.size, X, K, seed=0)
  terms = []
  for b in range(segment_ids.shape[0]):
    for d in set(segment_ids[b].tolist()) - {0}:
      rows = b * segment_ids.shape[1] + np.flatnonzero(segment_ids[b] == d)
      f = X / (K * len(rows)) * np.bincount(ids[rows].ravel(), minlength=X)
      terms.append(np.sum(f * probs[rows].mean(axis=0)))
  got = sequence_balance_loss(jnp.asarray(probs), jnp.asarray(ids), jnp.asarray(segment_ids), X)
  assert len(terms) == 3
  np.testing.assert_allclose(float(got), np.mean(terms), rtol=1e-6)


def test_sequence_balance_loss_is_unchanged_by_packing():
  """Two documents packed into one row give the same loss, and the same gradient w.r.t. the
  router affinities, as the same documents in rows of their own."""
  X, K, la, lb = 8, 2, 5, 7
  probs, ids = _random_routing(la + lb, X, K, seed=1)
  packed_seg = np.array([[1] * la + [2] * lb], np.int32)
  T = la + lb
  pad = lambda n: np.zeros((T - n,) + probs.shape[1:], np.float32)
  alone_probs = np.concatenate([probs[:la], pad(la), probs[la:], pad(lb)])
  alone_ids = np.concatenate([ids[:la], np.zeros((T - la, K), np.int32), ids[la:], np.zeros((T - lb, K), np.int32)])
  alone_seg = np.array([[1] * la + [0] * (T - la), [1] * lb + [0] * (T - lb)], np.int32)

  loss = lambda p, i, s: sequence_balance_loss(p, i, s, X)
  packed, g_packed = jax.value_and_grad(loss)(jnp.asarray(probs), jnp.asarray(ids), jnp.asarray(packed_seg))
  alone, g_alone = jax.value_and_grad(loss)(jnp.asarray(alone_probs), jnp.asarray(alone_ids), jnp.asarray(alone_seg))
  np.testing.assert_allclose(float(packed), float(alone), rtol=1e-6)
  g_alone = np.asarray(g_alone)
  np.testing.assert_allclose(np.asarray(g_packed), np.concatenate([g_alone[:la], g_alone[T:T + lb]]), rtol=1e-5)
  # Per row instead of per document would mix the two documents' statistics:
  whole_row = sequence_balance_loss(jnp.asarray(probs), jnp.asarray(ids), jnp.ones((1, T), jnp.int32), X)
  assert abs(float(whole_row) - float(packed)) > 1e-3
