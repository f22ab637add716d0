"""Cross-entropy over the vocabulary in chunks, so the `[tokens, vocab]` fp32 logits never
exist at once: an online log-sum-exp runs over vocab chunks of the output projection and each
chunk's logits are recomputed in the backward pass. Chunking the vocabulary (not the tokens)
leaves the batch and sequence shardings of the hidden states untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(h, w, targets, *, vocab_chunk: int):
  """Per-token -log p(target): h `[B, T, E]`, w `[E, V]`, targets `[B, T]` -> `[B, T]` fp32."""
  E, V = w.shape
  chunk = min(vocab_chunk, V)
  n = -(-V // chunk)
  if n * chunk != V:
    w = jnp.pad(w, ((0, 0), (0, n * chunk - V)))
  w_chunks = jnp.moveaxis(w.reshape(E, n, chunk), 1, 0)  # [n, E, chunk]

  @jax.checkpoint
  def step(carry, xs):
    running_max, running_sum, target_logit = carry
    w_c, index = xs
    logits = jnp.einsum("bte,ev->btv", h, w_c, preferred_element_type=jnp.float32)
    column = index * chunk + jnp.arange(chunk)
    logits = jnp.where(column < V, logits, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
    running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(logits - new_max[..., None]), -1)
    hit = column == targets[..., None]
    target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    return (new_max, running_sum, target_logit), None

  B, T = targets.shape
  init = (jnp.full((B, T), -jnp.inf, jnp.float32), jnp.zeros((B, T), jnp.float32), jnp.zeros((B, T), jnp.float32))
  (running_max, running_sum, target_logit), _ = jax.lax.scan(step, init, (w_chunks, jnp.arange(n)))
  return running_max + jnp.log(running_sum) - target_logit


def token_losses_unchunked(h, w, targets):
  """The plain formulation, kept as the reference the chunked one is tested against."""
  logits = jnp.einsum("bte,ev->btv", h, w, preferred_element_type=jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  return lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
