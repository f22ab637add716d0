"""The sampler's contract: filtering equals transformers' top-k / top-p warpers, draws follow the
filtered distribution, bucketed shapes do not recompile, stop strings cut completions, `n`
samples per prompt, and a prompt's samples do not depend on the rest of the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.data.tokenizer import ByteTokenizer
from jaxtrain.generate.sampler import Sampler, SamplingParams, generate
from jaxtrain.generate.sampling import filter_top_k_top_p, row_keys, select
from jaxtrain.models.decoder import Decoder
from tests.helpers import tiny_moe


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.7), (8, 0.5), (0, 0.05), (3, 0.99)])
def test_filtering_equals_transformers_warpers(top_k, top_p):
  torch = pytest.importorskip("torch")
  from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
  logits = np.random.default_rng(top_k).normal(0, 2, (6, 40)).astype(np.float32)
  ours = np.asarray(filter_top_k_top_p(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
  ref = torch.tensor(logits)
  if top_k:
    ref = TopKLogitsWarper(top_k)(None, ref)
  if top_p < 1:
    ref = TopPLogitsWarper(top_p)(None, ref)
  np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref.numpy()))
  np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


def test_draws_follow_the_filtered_tempered_distribution():
  logits = jnp.asarray(np.random.default_rng(0).normal(0, 1, (1, 12)).astype(np.float32))
  T, top_k, top_p = 0.7, 6, 0.9
  target = np.asarray(jax.nn.softmax(filter_top_k_top_p(logits / T, jnp.int32(top_k), jnp.float32(top_p))))[0]
  draws = 40000
  keys = row_keys(jax.random.key(1), 0, draws)
  tokens, logp = jax.jit(lambda k: select(jnp.repeat(logits, draws, 0), k, jnp.float32(T), jnp.int32(top_k),
                                          jnp.float32(top_p), greedy=False, filtered=True))(keys)
  freq = np.bincount(np.asarray(tokens), minlength=12) / draws
  np.testing.assert_allclose(freq, target, atol=0.012)
  assert (freq[target == 0] == 0).all()
  # the reported log-probability is the tempered, unfiltered one
  np.testing.assert_allclose(np.asarray(logp), np.asarray(jax.nn.log_softmax(logits / T))[0][np.asarray(tokens)],
                             rtol=1e-5)


def _model(**changes):
  return Decoder(tiny_moe(**changes), rngs=nnx.Rngs(3))


def _backend_compiles():
  events = []

  def listener(name, *_args, **_kw):
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  return events, listener


def test_bucketed_shapes_do_not_recompile():
  model = _model(sliding_window=4, layer_types=("sliding_attention", "full_attention"))
  sampler = Sampler(model, eos_ids=(7,), min_prompt_bucket=8, min_batch_bucket=4, decode_chunk=4)
  params = SamplingParams(max_new_tokens=9, temperature=1.0, top_p=0.9, n=2)
  rng = np.random.default_rng(0)
  batches = [[rng.integers(1, 64, n).tolist() for n in lengths] for lengths in ((3, 5, 7), (2, 8, 1, 6), (4, 4))]
  sampler.generate(batches[0], params, seed=0)
  events, listener = _backend_compiles()
  try:
    for i, prompts in enumerate(batches):
      out = sampler.generate(prompts, params, seed=i)
      assert len(out.completions) == 2 * len(prompts)
    sampler.generate(batches[0], SamplingParams(max_new_tokens=9, temperature=0.5, top_p=0.8, n=2), seed=3)
    assert events == [], f"{len(events)} compilations for batches in seen buckets"
    sampler.generate([rng.integers(1, 64, 12).tolist()], params)  # prompt bucket 16: compiles
    assert events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_n_samples_seeds_and_batch_independence():
  model = _model()
  sampler = Sampler(model, eos_ids=(), decode_chunk=4)
  a, b = [5, 9, 11, 2], [3, 3, 8]
  params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3)
  both = sampler.generate([a, b], params, seed=7).completions
  alone = sampler.generate([a], params, seed=7).completions
  assert [c.prompt_index for c in both] == [0, 0, 0, 1, 1, 1]
  assert [c.token_ids for c in both[:3]] == [c.token_ids for c in alone]
  assert len({tuple(c.token_ids) for c in both[:3]}) > 1  # independent samples
  assert [c.token_ids for c in sampler.generate([a], params, seed=8).completions] != [c.token_ids for c in alone]
  # logprobs are those of the model at temperature 1: recompute them with a full forward pass
  c = alone[1]
  ids = jnp.asarray([a + c.token_ids])
  logp = jax.nn.log_softmax(model(ids).logits[0, len(a) - 1:-1], axis=-1)
  expected = np.asarray(logp)[np.arange(len(c.token_ids)), c.token_ids]
  np.testing.assert_allclose(c.logprobs, expected, atol=2e-5)


def test_stop_strings_cut_completions_and_end_decoding_early():
  tok = ByteTokenizer()
  model = _model(vocab_size=272)
  sampler = Sampler(model, tokenizer=tok, decode_chunk=4)
  prompts = [tok.encode("abc"), tok.encode("hello wor")]
  free = sampler.generate(prompts, SamplingParams(max_new_tokens=40, temperature=0.0))
  text = free.completions[0].token_ids
  assert all(t < tok.vocab_size for c in free.completions for t in c.token_ids)
  stop = tok.decode(text[5:7])
  cut = sampler.generate(prompts, SamplingParams(max_new_tokens=40, temperature=0.0, stop=(stop,)))
  first = cut.completions[0]
  full_text = tok.decode(text)
  assert first.finish_reason == "stop"
  assert first.text == full_text[:full_text.index(stop)]
  assert tok.decode(first.token_ids).endswith(stop) and not tok.decode(first.token_ids[:-1]).endswith(stop)
  assert first.token_ids == text[:len(first.token_ids)]
  if stop in free.completions[1].text:  # both rows stop: decoding ends well before 40 tokens
    assert cut.stats["decode_steps"] < 39


def test_generate_wrapper_continues_every_row_exactly_max_new_tokens():
  model = _model()
  out = np.asarray(generate(model, np.array([[1, 2, 3], [4, 5, 6]]), max_new_tokens=6, temperature=0.0))
  assert out.shape == (2, 9)
  greedy = np.asarray(model(jnp.asarray(out)).logits)[:, 2:-1].argmax(-1)
  np.testing.assert_array_equal(out[:, 3:], greedy)


def test_stream_yields_the_generate_tokens_chunk_by_chunk_and_stops():
  model = _model()
  params = SamplingParams(max_new_tokens=11, temperature=1.0)
  prompt = [4, 8, 15, 16]
  free = Sampler(model, eos_ids=(), decode_chunk=4)
  want = free.generate([prompt], params, seed=2).completions[0].token_ids
  pieces = list(free.stream(prompt, params, seed=2))
  assert [len(p) for p in pieces] == [1, 4, 4, 2]  # the prefill's token, then whole chunks, cut at the budget
  assert sum(pieces, []) == want
  stop = want[6]  # a stop token ends the stream with it, as it ends generate's completion
  stopped = Sampler(model, eos_ids=(stop,), decode_chunk=4)
  pieces = list(stopped.stream(prompt, params, seed=2))
  assert sum(pieces, []) == stopped.generate([prompt], params, seed=2).completions[0].token_ids
  assert pieces[-1][-1] == stop and len(sum(pieces, [])) <= 7
  with pytest.raises(ValueError, match="n=1"):
    next(free.stream(prompt, SamplingParams(n=2)))
