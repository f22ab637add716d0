"""Pallas flash attention against the XLA reference: outputs and gradients w.r.t. q, k, v and
sinks, over the features of the attention contract.

Tolerances.
- fp32: 1e-5 of the largest reference magnitude (max |a - b| <= 1e-5 * max |b|). Both sides
  compute the same fp32 softmax; flash attention rescales blockwise (online softmax) and sums in
  a different order, which costs a few fp32 ulps (measured ~3e-7).
- bf16: 2e-2 of the largest reference magnitude, and no worse than twice the reference's own
  bf16 error against an fp32 computation (floor 2**-7). bf16 keeps 8 significant bits (ulp
  2**-7 ~ 7.8e-3 relative); the output, the probabilities fed to the P @ V product and, in the
  backward pass, dS are rounded to bf16 at different points in the two implementations (the
  reference normalises before rounding, flash attention after), so each side is ~1 ulp from the
  fp32 result (measured 3e-3 to 6e-3) and they may differ by ~2 ulps (2 * 7.8e-3 ~ 1.6e-2).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrain.kernels import FlashBlocks, attention, attention_reference, dispatch, interpret_mode, resolve
from jaxtrain.kernels.flash_attention import flash_attention

COMPILED = os.environ.get("JAXTRAIN_PALLAS_INTERPRET", "").strip() == "0"  # see conftest.py
FAST_COMPILE = None if COMPILED else {"xla_backend_optimization_level": 0}  # interpret mode: compile time dominates
SMALL = FlashBlocks(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)


def max_rel_err(actual, expected):
  actual = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  expected = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
  assert actual.shape == expected.shape
  assert np.all(np.isfinite(actual))
  scale = np.abs(expected).max(initial=0.0)
  err = np.abs(actual - expected).max(initial=0.0)
  return err / scale if scale > 0 else (0.0 if err == 0 else np.inf)


def segments(B, T, kind, rng):
  """Segment ids: "none" (all ones: one document per row), "packed" (three documents and
  trailing padding, segment 0), "with_empty_row" (packed, and batch row 1 is all padding, so
  every query there is fully masked)."""
  if kind == "none":
    return jnp.ones((B, T), jnp.int32)
  seg = np.zeros((B, T), np.int32)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(2, T - 4), size=2, replace=False))
    seg[b, :cuts[0]] = 1
    seg[b, cuts[0]:cuts[1]] = 2
    seg[b, cuts[1]:T - 3 - b] = 3
  if kind == "with_empty_row" and B > 1:
    seg[1] = 0
  return jnp.asarray(seg)


def inputs(B, T, H, KVH, D, Dv, seed, sinks):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, H, D)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, T, KVH, D)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, T, KVH, Dv)), jnp.float32)
  s = jnp.asarray(rng.normal(size=(H,)), jnp.float32) if sinks else None
  cot = jnp.asarray(rng.normal(size=(B, T, H, Dv)), jnp.float32)
  return q, k, v, s, cot, rng


def value_and_grads(fn, dtype, **kw):
  """Output and the VJP of <out, cot> w.r.t. q, k, v (and sinks), in one compiled function.
  Inputs arrive in fp32 and are cast to `dtype` inside, so gradients come back in fp32. Segment
  ids are a runtime argument: one compilation serves every segment layout."""

  def run(q, k, v, sinks, seg, cot):
    def f(q, k, v, sinks):
      out = fn(q.astype(dtype), k.astype(dtype), v.astype(dtype), sinks=sinks, q_segment_ids=seg, **kw)
      return out.astype(jnp.float32)
    out, vjp = jax.vjp(f, q, k, v, sinks)
    return (out, *vjp(cot))

  return jax.jit(run, compiler_options=FAST_COMPILE if fn is not attention_reference else None)


def pallas(blocks):
  return lambda *a, **kw: flash_attention(*a, block_sizes=blocks, **kw)


# name: (B, T, H, KVH, D, Dv, causal, window, sinks, blocks); every case also runs each segment layout.
CASES = {
    "mha_causal_aligned": (1, 32, 2, 2, 16, 16, True, None, False, SMALL),
    "gqa_causal_ragged_T": (2, 37, 4, 2, 32, 32, True, None, False, SMALL),
    "mqa_head_dim_64": (1, 45, 4, 1, 64, 64, True, None, False, SMALL),
    "window": (1, 48, 2, 1, 16, 16, True, 10, False, SMALL),
    "gpt_oss_sinks_window_gqa": (2, 33, 4, 2, 16, 16, True, 8, True, SMALL),
    "noncausal": (2, 40, 2, 2, 16, 16, False, None, False, SMALL),
    "noncausal_window": (1, 50, 3, 1, 16, 16, False, 7, False, SMALL),
    "head_dim_128": (1, 40, 2, 2, 128, 128, True, None, False, FlashBlocks(32, 16, 16, 32)),
    "mla_192_128": (1, 36, 2, 2, 192, 128, True, None, False, SMALL),
    "odd_head_dims_40_24_sinks": (1, 30, 2, 1, 40, 24, True, 12, True, SMALL),
    "uneven_blocks": (1, 70, 2, 1, 16, 16, True, 20, False, FlashBlocks(32, 16, 16, 32)),
}
LAYOUTS = ("none", "packed", "with_empty_row")


def assert_matches_reference(fn, case):
  """fp32 outputs and gradients of `fn` within 1e-5 of the reference for CASES[case] under every
  segment layout; padding rows get zero output and zero gradient."""
  B, T, H, KVH, D, Dv, causal, window, sinks, _ = CASES[case]
  q, k, v, s, cot, rng = inputs(B, T, H, KVH, D, Dv, seed=len(case), sinks=sinks)
  kw = dict(causal=causal, sliding_window=window)
  got_fn = value_and_grads(fn, jnp.float32, **kw)
  want_fn = value_and_grads(attention_reference, jnp.float32, **kw)
  for layout in LAYOUTS[:3 if B > 1 else 2]:
    seg = segments(B, T, layout, rng)
    got, want = got_fn(q, k, v, s, seg, cot), want_fn(q, k, v, s, seg, cot)
    for name, a, b in zip(("out", "dq", "dk", "dv", "dsinks"), got, want):
      if b is None:
        assert a is None
        continue
      assert max_rel_err(a, b) <= 1e-5, (layout, name)
    pad = np.asarray(seg) == 0  # padding rows: zero output, zero gradient
    assert not np.any(np.asarray(got[0])[pad]), layout
    assert not np.any(np.asarray(got[1])[pad]), layout


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_reference(case):
  assert_matches_reference(pallas(CASES[case][-1]), case)


def test_custom_scale_and_separate_kv_segments():
  """A non-default scale, and kv segment ids that leave some non-padding queries with no key."""
  B, T, H, D = 1, 34, 2, 16
  q, k, v, _, cot, rng = inputs(B, T, H, 1, D, D, seed=3, sinks=False)
  q_seg = jnp.asarray(np.where(np.arange(T) < 20, 1, 2)[None], jnp.int32)
  kv_seg = jnp.asarray(np.where(np.arange(T) < 25, 1, 3)[None], jnp.int32)  # segment 2 queries see nothing
  kw = dict(kv_segment_ids=kv_seg, causal=True, scale=0.37)
  got = value_and_grads(pallas(SMALL), jnp.float32, **kw)(q, k, v, None, q_seg, cot)
  want = value_and_grads(attention_reference, jnp.float32, **kw)(q, k, v, None, q_seg, cot)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert max_rel_err(a, b) <= 1e-5, name
  assert not np.any(np.asarray(got[0])[0, 20:]), "queries with no visible key output zeros"


def test_bf16_matches_reference():  # MLA in bf16: test_default_blocks_realistic (GPU)
  B, T, H, KVH, D, Dv, causal, window, sinks, blocks = CASES["gpt_oss_sinks_window_gqa"]
  q, k, v, s, cot, rng = inputs(B, T, H, KVH, D, Dv, seed=1, sinks=sinks)
  seg = segments(B, T, "with_empty_row", rng)
  kw = dict(causal=causal, sliding_window=window)
  got = value_and_grads(pallas(blocks), jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  ref_bf16 = value_and_grads(attention_reference, jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  ref_f32 = value_and_grads(attention_reference, jnp.float32, **kw)(q, k, v, s, seg, cot)
  for name, a, b, t in zip(("out", "dq", "dk", "dv", "dsinks"), got, ref_bf16, ref_f32):
    assert max_rel_err(a, b) <= 2e-2, name
    assert max_rel_err(a, t) <= max(2 * max_rel_err(b, t), 2.0 ** -7), name


def test_dispatch_interpret_fallbacks_and_logging(caplog, monkeypatch):
  B, T, H, D = 1, 24, 2, 16
  q, k, v, s, _, _ = inputs(B, T, H, 1, D, D, seed=0, sinks=True)
  want = attention_reference(q, k, v, sinks=s)
  with interpret_mode(True):
    assert resolve("attention", "pallas")[0] == "pallas"
    with jax.default_matmul_precision("highest"):
      got = jax.jit(lambda *a: attention(*a, sinks=s, impl="pallas"), compiler_options=FAST_COMPILE)(q, k, v)
    assert max_rel_err(got, want) <= 1e-5
    # Decoding-style calls (explicit positions, S != T) use the reference inside the pallas impl.
    pos = jnp.arange(T, dtype=jnp.int32)[None] + 5
    dec = attention(q[:, -1:], k, v, q_positions=pos[:, -1:], kv_positions=pos, impl="pallas")
    ref = attention_reference(q[:, -1:], k, v, q_positions=pos[:, -1:], kv_positions=pos)
    np.testing.assert_array_equal(np.asarray(dec), np.asarray(ref))
  if jax.default_backend() == "cpu":
    assert resolve("attention", "auto")[0] == "chunked"
    monkeypatch.delenv("JAXTRAIN_PALLAS_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_warned", set())
    with interpret_mode(False), caplog.at_level(logging.WARNING, logger="jaxtrain.kernels"):
      for impl in ("pallas", "pallas", "cudnn", "cudnn"):
        out = attention(q, k, v, sinks=s, impl=impl)  # no exception: the reference runs
        np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
    lines = [r.getMessage() for r in caplog.records if "cannot run on backend" in r.getMessage()]
    assert len(lines) == 2, lines  # one line per (impl, backend), not per call
    with pytest.raises(ValueError):
      attention(q, k, v, impl="flash")


@pytest.mark.compiled_only
@pytest.mark.parametrize("D,Dv,H,KVH,window,sinks", [(128, 128, 8, 2, None, False), (64, 64, 4, 4, 128, True),
                                                       (192, 128, 4, 4, None, False)])
def test_default_blocks_realistic(D, Dv, H, KVH, window, sinks):
  """Default (GPU-sized) blocks, packed bf16 batch of 1k tokens."""
  B, T = 2, 1024
  q, k, v, s, cot, rng = inputs(B, T, H, KVH, D, Dv, seed=2, sinks=sinks)
  seg = segments(B, T, "with_empty_row", rng)
  kw = dict(causal=True, sliding_window=window)
  got = value_and_grads(pallas(None), jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  ref_bf16 = value_and_grads(attention_reference, jnp.bfloat16, **kw)(q, k, v, s, seg, cot)
  for name, a, b in zip(("out", "dq", "dk", "dv", "dsinks"), got, ref_bf16):
    if b is not None:
      assert max_rel_err(a, b) <= 2e-2, name
