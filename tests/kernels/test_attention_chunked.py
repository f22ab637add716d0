"""Chunked (blockwise, pure-JAX) attention against the XLA reference: outputs and gradients
w.r.t. q, k, v and sinks over the same grid of features as the Pallas kernel, plus decoding
shapes and the memory it exists to save.

Tolerances: fp32 1e-5 of the largest reference magnitude (same reasoning as the flash attention
tests: online softmax sums in a different order; measured <= 8e-7). bf16: 2e-2, as there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.kernels import attention, attention_reference, resolve
from jaxtrain.kernels.attention_chunked import chunked_attention
from tests.kernels.test_flash_attention import (CASES, assert_matches_reference, inputs, max_rel_err, segments,
                                                value_and_grads)


def chunked(block_q=16, block_k=8):
  return lambda *a, **kw: chunked_attention(*a, block_q=block_q, block_k=block_k, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_reference(case):
  assert_matches_reference(chunked(), case)


def test_bf16_within_stated_tolerance():
  B, T, H, KVH, D, Dv = 2, 40, 4, 2, 32, 32
  q, k, v, s, cot, rng = inputs(B, T, H, KVH, D, Dv, seed=7, sinks=True)
  seg = segments(B, T, "packed", rng)
  kw = dict(causal=True, sliding_window=12)
  got = value_and_grads(chunked(), jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  want = value_and_grads(attention_reference, jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  for name, a, b in zip(("out", "dq", "dk", "dv", "dsinks"), got, want):
    assert max_rel_err(a, b) <= 2e-2, name


def test_decoding_shapes_custom_scale_and_kv_segments():
  """Few queries over a longer key sequence with explicit positions (a KV cache), kv segment ids
  that hide the cache's unwritten tail, and a non-default scale."""
  B, S, T, H, KVH, D = 2, 45, 3, 4, 2, 16
  rng = np.random.default_rng(5)
  q = jnp.asarray(rng.normal(size=(B, T, H, D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, S, KVH, D)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, S, KVH, D)), jnp.float32)
  kv_pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  kv_seg = (kv_pos < 30).astype(jnp.int32)
  q_pos = jnp.broadcast_to(jnp.arange(27, 30, dtype=jnp.int32), (B, T))
  kw = dict(q_segment_ids=jnp.ones((B, T), jnp.int32), kv_segment_ids=kv_seg, q_positions=q_pos,
            kv_positions=kv_pos, causal=True, sliding_window=20, scale=0.3)
  got = chunked(block_q=2, block_k=8)(q, k, v, **kw)
  want = attention_reference(q, k, v, **kw)
  assert max_rel_err(got, want) <= 1e-5


def test_memory_is_linear_in_sequence_length():
  """Compiled fwd+bwd temporaries: the reference keeps [B, H, T, T] probabilities (x4 when T
  doubles); chunked attention keeps per-block scores and row statistics (about x2)."""
  def temp_bytes(fn, T):
    q = jax.ShapeDtypeStruct((1, T, 2, 16), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
    return grad.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes

  ref = [temp_bytes(attention_reference, T) for T in (512, 1024)]
  chk = [temp_bytes(chunked(128, 128), T) for T in (512, 1024)]
  assert ref[1] / ref[0] > 3.0
  assert chk[1] / chk[0] < 2.5
  assert chk[1] < ref[1] / 4


def test_auto_is_chunked_off_gpu_and_one_block_is_the_reference():
  if jax.default_backend() != "gpu":
    assert resolve("attention", "auto")[0] == "chunked"
  q, k, v, _, _, _ = inputs(1, 20, 2, 1, 16, 16, seed=1, sinks=False)
  np.testing.assert_array_equal(np.asarray(attention(q, k, v, impl="chunked")),
                                np.asarray(attention_reference(q, k, v)))
