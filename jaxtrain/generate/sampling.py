"""Choosing the next token from logits: greedy, or a draw at a temperature from the top-k /
top-p (nucleus) filtered distribution, in that order (as `transformers` and vLLM apply them).

The values are traced arrays (changing them never recompiles); only whether to draw at all
(`greedy`) and whether to filter (`filtered`, which costs a sort over the vocabulary) are
static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_vocab(logits, vocab_limit: int | None):
  """Ids >= `vocab_limit` (rows of a model vocabulary padded past the tokenizer's) get -inf."""
  if vocab_limit is None or vocab_limit >= logits.shape[-1]:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)


def filter_top_k_top_p(logits, top_k, top_p):
  """logits `[B, V]` with everything outside the `top_k` largest (0 = no limit) and then
  outside the smallest set whose probability reaches `top_p` (1 = no limit) set to -inf. The
  most likely token always survives."""
  V = logits.shape[-1]
  ordered = -jnp.sort(-logits, axis=-1)  # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
  rank = jnp.arange(V)
  ordered = jnp.where(rank < k, ordered, -jnp.inf)
  probs = jax.nn.softmax(ordered, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each rank
  kept = jnp.maximum(jnp.sum((before < top_p) & (rank < k), axis=-1), 1)
  threshold = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def select(logits, keys, temperature, top_k, top_p, *, greedy: bool, filtered: bool,
           vocab_limit: int | None = None):
  """logits `[B, V]`, one PRNG key per row -> (token ids `[B]` int32, their log-probabilities
  `[B]` under softmax(logits / temperature) before filtering: the policy RL trains on; under
  softmax(logits) when greedy)."""
  logits = mask_vocab(logits.astype(jnp.float32), vocab_limit)
  if greedy:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
  else:
    logits = logits / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    if filtered:
      logits = filter_top_k_top_p(logits, top_k, top_p)
    token = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, logits).astype(jnp.int32)
  return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def row_keys(rng, step, rows: int):
  """One key per row for decoding step `step`: a row's draws depend on the call's key, its row
  and the step only, not on which other prompts share the batch."""
  step_key = jax.random.fold_in(rng, step)
  return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(jnp.arange(rows))
