"""Batched autoregressive sampling with a KV cache, for samples, evaluation and RL rollouts.

    sampler = Sampler(model, tokenizer=tok)            # or Sampler(graphdef, ...) + state=
    batch = sampler.generate([[1, 5, 7], [1, 9]], SamplingParams(max_new_tokens=64, n=4,
                             temperature=1.0, top_p=0.95, stop=("\\n\\n",)), seed=0)
    batch.completions[i]  # Completion(prompt_index, token_ids, logprobs, text, finish_reason)

How it runs:
- Prompts of different lengths are **left-padded** to a common length, and each row's cache
  remembers where its prompt starts (`Decoder.init_cache(start=...)`): positions (RoPE) count
  from the first real token, and the causal / sliding-window masks compare cache slots, whose
  differences are the true distances. So every row is computed exactly as if it were alone.
- Shapes are **bucketed**: the prompt length to a power of two (at least `min_prompt_bucket`),
  the number of prompts to a power of two (padding rows are dropped), the cache to the prompt
  bucket plus `max_new_tokens` rounded up to the decode chunk. A new batch whose shapes fall in
  seen buckets reuses the compiled programs.
- One **prefill** pass over the prompts, whose cache and last logits are then repeated `n`
  times (each prompt is read once, however many samples it gets); then **decode chunks** of
  `decode_chunk` tokens, each one compiled `lax.scan` with the cache donated. Between chunks
  the host checks stop strings and stops once every row has finished, so a batch whose rows
  all end early does not pay for `max_new_tokens`.
- Stop tokens (the tokenizer's EOS and `stop_token_ids`) end a row on the device. Stop strings
  are found in the decoded text on the host; the completion then ends with the token that
  completed the stop string. Completion text never includes the stop token or stop string.
- Each row draws from its own key (call key, row, step), so a prompt's samples do not depend
  on the other prompts in the batch.

Prompts with pictures (`generate.vision.VisionPrompt`: expanded token ids and the processor's
pixel arrays) are laid out per row as training lays them out; the prefill runs the vision tower
and merges its features, and Qwen3-VL's decoding continues its 3-D positions (the model keeps
the shift in the cache).

`generate(model, prompt_ids, ...)` is the simple array-in / array-out entry point (the
Trainer's end-of-run sample uses it).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtrain.generate import vision
from jaxtrain.generate.sampling import row_keys, select
from jaxtrain.generate.stops import find_stop


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = no limit
  top_p: float = 1.0  # 1 = no limit
  n: int = 1  # samples per prompt
  stop: tuple[str, ...] = ()  # stop strings (need a tokenizer)
  stop_token_ids: tuple[int, ...] = ()  # besides the sampler's eos ids

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.n < 1:
      raise ValueError(f"n must be >= 1, got {self.n}")


@dataclasses.dataclass
class Completion:
  prompt_index: int
  token_ids: list[int]  # generated ids, ending with the stop token / the stop string's last token
  logprobs: list[float]  # per generated token: log p under softmax(logits / temperature)
  text: str | None  # decoded, without the stop token or stop string (None without a tokenizer)
  finish_reason: str  # "stop" or "length"


@dataclasses.dataclass
class SampleBatch:
  completions: list[Completion]  # prompt i's samples are i * n ... i * n + n - 1
  stats: dict  # tokens, seconds, tokens_per_sec, prefill_seconds, decode_steps, shapes


def bucket(x: int, minimum: int) -> int:
  """The power of two >= max(x, minimum)."""
  x = max(x, minimum, 1)
  return 1 << (x - 1).bit_length()


def _repeat_rows(tree, n: int, axis_of):
  return jax.tree.map(lambda a: jnp.repeat(a, n, axis=axis_of(a)), tree)


@partial(jax.jit, static_argnames=("graphdef", "n", "cache_len", "greedy", "filtered", "vocab_limit"))
def _prefill(graphdef, states, tokens, start, rng, temperature, top_k, top_p, vision, *, n, cache_len, greedy,
             filtered, vocab_limit):
  """`vision`: the per-row vision inputs of a batch with pictures (`generate/vision.py`), else {}."""
  model = nnx.merge(graphdef, *states)
  B, P = tokens.shape
  cache = model.init_cache(B, cache_len, start=start)
  segment_ids = (jnp.arange(P)[None, :] >= start[:, None]).astype(jnp.int32)
  out = model(tokens, segment_ids=segment_ids, cache=cache, **vision)
  logits = jnp.repeat(out.logits[:, -1], n, axis=0)
  cache = {"index": out.cache["index"], "start": jnp.repeat(out.cache["start"], n),
           # stage caches are [layers, batch, ...]
           "stages": _repeat_rows(out.cache["stages"], n, lambda a: 1)}
  if "rope_shift" in out.cache:  # multimodal positions: decoding continues after the prompt's furthest
    cache["rope_shift"] = jnp.repeat(out.cache["rope_shift"], n)
  token, logp = select(logits, row_keys(rng, 0, B * n), temperature, top_k, top_p, greedy=greedy,
                       filtered=filtered, vocab_limit=vocab_limit)
  return token, logp, cache


@partial(jax.jit, static_argnames=("graphdef", "chunk", "greedy", "filtered", "vocab_limit"), donate_argnums=(2,))
def _decode(graphdef, states, cache, token, done, first_step, rng, temperature, top_k, top_p, stop_ids, pad_id, *,
            chunk, greedy, filtered, vocab_limit):
  """`chunk` decoding steps: feeds `token`, returns the next `chunk` tokens `[B, chunk]`, their
  log-probabilities, the last token, the done flags and the cache."""
  model = nnx.merge(graphdef, *states)
  B = token.shape[0]

  def step(carry, i):
    token, done, cache = carry
    out = model(token[:, None], cache=cache)
    nxt, logp = select(out.logits[:, -1], row_keys(rng, first_step + i, B), temperature, top_k, top_p,
                       greedy=greedy, filtered=filtered, vocab_limit=vocab_limit)
    nxt = jnp.where(done, pad_id, nxt)
    done = done | jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
    return (nxt, done, out.cache), (nxt, logp)

  (token, done, cache), (tokens, logps) = jax.lax.scan(step, (token, done, cache), jnp.arange(chunk))
  return tokens.T, logps.T, token, done, cache


@dataclasses.dataclass
class _Run:
  """One sampling call in progress: its shapes, its chunks (a generator) and timings."""
  shapes: dict
  chunks: Any = None
  prefill_seconds: float = 0.0
  decode_steps: int = 0


class Sampler:
  """Samples completions of token-id prompts (see the module docstring). `model` is an NNX
  model (its current weights are used unless `generate(state=...)` passes others) or a
  graphdef (then every call passes `state`: the tuple of states `nnx.merge(graphdef, *state)`
  takes, e.g. `(params, model_state)` of a split `nnx.split(model, nnx.Param, ...)`)."""

  def __init__(self, model: Any, *, tokenizer: Any = None, eos_ids: Sequence[int] | None = None,
               vocab_limit: int | None = None, pad_id: int | None = None, min_prompt_bucket: int = 16,
               min_batch_bucket: int = 1, decode_chunk: int = 16):
    if isinstance(model, nnx.Module):
      self.graphdef, state = nnx.split(model)
      self.state = (state,)
    else:
      self.graphdef, self.state = model, None
    self.model = model  # its host-side vision layout (`prepare`) lays out prompts with pictures
    self.tokenizer = tokenizer
    if eos_ids is None:
      eos_ids = () if tokenizer is None or tokenizer.eos_id is None else (tokenizer.eos_id,)
    self.eos_ids = tuple(int(i) for i in eos_ids)
    if vocab_limit is None and tokenizer is not None:
      vocab_limit = tokenizer.vocab_size
    self.vocab_limit = vocab_limit
    self.pad_id = int(pad_id if pad_id is not None else getattr(tokenizer, "pad_id", None) or 0)
    self.min_prompt_bucket = min_prompt_bucket
    self.min_batch_bucket = min_batch_bucket
    self.decode_chunk = decode_chunk

  def shapes(self, prompt_lengths: Sequence[int], params: SamplingParams) -> dict:
    """The bucketed shapes a call with these prompts compiles for."""
    batch = bucket(len(prompt_lengths), self.min_batch_bucket)
    prompt_len = bucket(max(prompt_lengths), self.min_prompt_bucket)
    steps = -(-max(params.max_new_tokens - 1, 1) // self.decode_chunk) * self.decode_chunk
    return {"batch": batch, "prompt_len": prompt_len, "cache_len": prompt_len + steps, "rows": batch * params.n}

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams = SamplingParams(), *, seed: int = 0,
               rng: Any = None, state: Any = None) -> SampleBatch:
    """Samples `params.n` completions of every prompt (lists of token ids). `rng` (a JAX key)
    overrides `seed`."""
    if not prompts:
      return SampleBatch([], {"tokens": 0, "seconds": 0.0, "tokens_per_sec": 0.0})
    t0 = time.perf_counter()
    run = self._chunks(prompts, params, seed=seed, rng=rng, state=state)
    out_tokens, out_logps = [], []
    for tokens, logps, _ in run.chunks:
      out_tokens.append(tokens)
      out_logps.append(logps)
    seconds = time.perf_counter() - t0
    n, real = params.n, len(prompts) * params.n
    ids = np.concatenate(out_tokens, axis=1)[:, :params.max_new_tokens]
    logps = np.concatenate(out_logps, axis=1)[:, :params.max_new_tokens]
    completions = [self._completion(r // n, ids[r], logps[r], params) for r in range(real)]
    n_tokens = sum(len(c.token_ids) for c in completions)
    stats = {"tokens": n_tokens, "seconds": seconds, "tokens_per_sec": n_tokens / max(seconds, 1e-9),
             "prefill_seconds": run.prefill_seconds, "decode_steps": run.decode_steps, **run.shapes}
    return SampleBatch(completions, stats)

  def stream(self, prompt: Sequence[int], params: SamplingParams = SamplingParams(), *, seed: int = 0,
             state: Any = None):
    """One prompt's completion as it is decoded: lists of new token ids, one per compiled chunk
    (the first holds the prefill's token); the last one ends with a stop token, if one came.
    The tokens are those `generate([prompt], params, seed=seed)` draws."""
    if params.n != 1 or params.stop:
      raise ValueError("stream samples one completion (n=1) and stops at stop tokens only (no stop strings)")
    stops = set(self.eos_ids) | set(params.stop_token_ids)
    left = params.max_new_tokens
    for tokens, _, _ in self._chunks([prompt], params, seed=seed, state=state).chunks:
      ids = tokens[0, :left].tolist()
      end = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
      yield ids[:end]
      left -= len(ids)
      if end is not None or left <= 0:
        return

  def _chunks(self, prompts, params: SamplingParams, *, seed: int = 0, rng: Any = None,
              state: Any = None) -> "_Run":
    """Checks the call, then returns a `_Run` whose `chunks` decode lazily: the prefill's
    tokens `[rows, 1]`, then one `[rows, decode_chunk]` per chunk until every row is done."""
    if state is not None:
      state = (state,) if isinstance(state, nnx.State) else tuple(state)
    state = self.state if state is None else state
    if state is None:
      raise ValueError("Sampler built from a graphdef: pass the model state to generate(state=...)")
    if params.stop and self.tokenizer is None:
      raise ValueError("stop strings need a tokenizer: Sampler(model, tokenizer=...)")
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty: a prompt needs at least one token (e.g. bos)")
    shapes = self.shapes([len(p) for p in prompts], params)
    run = _Run(shapes)
    run.chunks = self._decode_chunks(run, prompts, params, jax.random.key(seed) if rng is None else rng, state)
    return run

  def _decode_chunks(self, run: "_Run", prompts, params: SamplingParams, rng, state):
    shapes = run.shapes
    B, P, n = shapes["batch"], shapes["prompt_len"], params.n
    tokens = np.full((B, P), self.pad_id, np.int32)
    start = np.full((B,), P, np.int32)
    for i, p in enumerate(prompts):
      tokens[i, P - len(p):] = np.asarray(vision.prompt_ids(p), np.int32)
      start[i] = P - len(p)
    pictures = {k: jnp.asarray(a) for k, a in vision.batch_inputs(self.model, tokens, start, prompts).items()}
    greedy = params.temperature == 0
    filtered = not greedy and (params.top_k > 0 or params.top_p < 1)
    knobs = (jnp.float32(max(params.temperature, 1e-6)), jnp.int32(params.top_k), jnp.float32(params.top_p))
    static = dict(greedy=greedy, filtered=filtered, vocab_limit=self.vocab_limit)
    stop_ids = jnp.asarray(self.eos_ids + tuple(params.stop_token_ids) or (-1,), jnp.int32)

    t0 = time.perf_counter()
    token, logp, cache = _prefill(self.graphdef, state, jnp.asarray(tokens), jnp.asarray(start), rng, *knobs,
                                  pictures, n=n, cache_len=shapes["cache_len"], **static)
    first = np.asarray(token)
    run.prefill_seconds = time.perf_counter() - t0
    rows, real = B * n, len(prompts) * n
    done = np.isin(first, np.asarray(stop_ids))
    done[real:] = True  # batch-bucket padding rows
    yield first[:, None], np.asarray(logp)[:, None], done
    seen = [first[:, None]]
    generated, step = 1, 1
    while generated < params.max_new_tokens and not done.all():
      new, new_logp, token, done_dev, cache = _decode(
          self.graphdef, state, cache, token, jnp.asarray(done), jnp.int32(step), rng, *knobs, stop_ids,
          jnp.int32(self.pad_id), chunk=self.decode_chunk, **static)
      new = np.asarray(new)
      done = np.array(done_dev)
      step += self.decode_chunk
      generated += self.decode_chunk
      run.decode_steps = step - 1
      if params.stop:
        seen.append(new)
        ids = np.concatenate(seen, axis=1)
        for r in np.flatnonzero(~done[:real]):
          if find_stop(self.tokenizer, ids[r].tolist(), params.stop) is not None:
            done[r] = True
      yield new, np.asarray(new_logp), done

  def _completion(self, prompt_index: int, ids: np.ndarray, logps: np.ndarray, params: SamplingParams) -> Completion:
    ids = ids.tolist()
    stops = set(self.eos_ids) | set(params.stop_token_ids)
    end = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
    text_ids = ids[:end - 1] if end is not None else ids
    text_end = None
    if params.stop:
      found = find_stop(self.tokenizer, text_ids, params.stop)
      if found is not None:
        end, text_end = found
        text_ids = ids[:end]
    reason = "length" if end is None else "stop"
    ids = ids if end is None else ids[:end]
    text = None
    if self.tokenizer is not None:
      text = self.tokenizer.decode(text_ids)[:text_end]
    return Completion(prompt_index, ids, [float(x) for x in logps[:len(ids)]], text, reason)


def generate(model, prompt_ids, *, max_new_tokens: int, temperature: float = 0.8, top_k: int = 0, seed: int = 0,
             vocab_limit: int | None = None, top_p: float = 1.0):
  """prompt_ids `[B, P]` (int) -> `[B, P + max_new_tokens]`: every row continued for exactly
  `max_new_tokens` tokens (no stop tokens; cut them with `truncate_at_eos`)."""
  prompt = np.asarray(prompt_ids, np.int32)
  sampler = Sampler(model, vocab_limit=vocab_limit, eos_ids=())
  params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
  batch = sampler.generate([list(row) for row in prompt], params, seed=seed)
  new = np.asarray([c.token_ids for c in batch.completions], np.int32)
  return np.concatenate([prompt, new], axis=1)


def truncate_at_eos(ids, eos_id: int | None):
  ids = list(ids)
  if eos_id is not None and eos_id in ids:
    return ids[:ids.index(eos_id)]
  return ids


__all__ = ["Completion", "SampleBatch", "Sampler", "SamplingParams", "generate", "truncate_at_eos"]
