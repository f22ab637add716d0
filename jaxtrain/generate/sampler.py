"""Autoregressive sampling with a KV cache: one prefill pass over the prompt, then one token
per step inside a `lax.scan` (the whole generation is a single compiled program)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def sample_token(logits, rng, *, temperature: float, top_k: int, vocab_limit: int | None = None):
  """logits `[B, V]` -> token ids `[B]` (greedy when temperature == 0). Ids >= `vocab_limit`
  (rows of a model vocabulary padded past the tokenizer's) are never drawn."""
  if vocab_limit is not None and vocab_limit < logits.shape[-1]:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "vocab_limit"))
def _generate(graphdef, state, prompt, rng, *, max_new_tokens, temperature, top_k, vocab_limit):
  model = nnx.merge(graphdef, state)
  B, P = prompt.shape
  cache = model.init_cache(B, P + max_new_tokens)
  out = model(prompt, cache=cache)
  first = sample_token(out.logits[:, -1], jax.random.fold_in(rng, 0), temperature=temperature, top_k=top_k,
                       vocab_limit=vocab_limit)

  def step(carry, i):
    token, cache = carry
    out = model(token[:, None], cache=cache)
    nxt = sample_token(out.logits[:, -1], jax.random.fold_in(rng, i + 1), temperature=temperature, top_k=top_k,
                       vocab_limit=vocab_limit)
    return (nxt, out.cache), token

  (_, _), tokens = jax.lax.scan(step, (first, out.cache), jnp.arange(max_new_tokens))
  return jnp.concatenate([prompt, tokens.T], axis=1)


def generate(model, prompt_ids, *, max_new_tokens: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0,
             vocab_limit: int | None = None):
  """prompt_ids `[B, P]` (int) -> `[B, P + max_new_tokens]`; tokens after `eos_id` are cut
  by the caller (see `truncate_at_eos`)."""
  graphdef, state = nnx.split(model)
  prompt = jnp.asarray(prompt_ids, jnp.int32)
  return _generate(graphdef, state, prompt, jax.random.key(seed), max_new_tokens=max_new_tokens,
                   temperature=float(temperature), top_k=int(top_k), vocab_limit=vocab_limit)


def truncate_at_eos(ids, eos_id: int | None):
  ids = list(ids)
  if eos_id is not None and eos_id in ids:
    return ids[:ids.index(eos_id)]
  return ids
