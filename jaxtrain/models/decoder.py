"""The generic decoder-only transformer: embedding, scanned stages of decoder blocks, final
norm and LM head. Family files choose the blocks through `ModelConfig`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from jaxtrain.models.attention import Attention
from jaxtrain.models.config import LayerKind, ModelConfig
from jaxtrain.models.layers import REMAT, RMSNorm, cast, dtype_of, param
from jaxtrain.models.mla import MLAttention
from jaxtrain.models.mla import cache_shapes as mla_cache_shapes
from jaxtrain.models.mlp import MLP
from jaxtrain.models.moe import MoE
from jaxtrain.models.rope import rope_tables
from jaxtrain.parallel.rules import constrain


@struct.dataclass
class Output:
  logits: Any  # [B, T, V] (None when only hidden states were asked for)
  hidden: Any  # [B, T, E] after the final norm
  aux: dict  # MoE statistics per MoE layer (layer order); empty for dense models
  cache: Any = None


class Block(nnx.Module):
  """Pre-norm decoder layer: attention then a dense or MoE feed-forward network."""

  def __init__(self, cfg: ModelConfig, kind: LayerKind, *, rngs: nnx.Rngs):
    E, pd = cfg.hidden_size, cfg.param_dtype
    self.is_moe = kind.moe
    self.input_norm = RMSNorm(E, eps=cfg.rms_norm_eps, axis_name="embed", param_dtype=dtype_of(pd))
    attention = MLAttention if cfg.attention == "mla" else Attention
    self.attn = attention(cfg, sliding_window=kind.sliding_window, rngs=rngs)
    self.post_attn_norm = RMSNorm(E, eps=cfg.rms_norm_eps, axis_name="embed", param_dtype=dtype_of(pd))
    if kind.moe:
      self.moe = MoE(cfg, rngs=rngs)
    else:
      self.mlp = MLP(E, cfg.intermediate_size, act=cfg.activation, std=cfg.initializer_range, param_dtype=pd,
                     rngs=rngs, chunk=cfg.ffn_chunk, fp8=cfg.fp8_gemms)

  def __call__(self, x, cos, sin, segment_ids, positions, cache):
    h, cache = self.attn(self.input_norm(x), cos, sin, segment_ids, positions=positions, cache=cache)
    x = x + checkpoint_name(h, "attention_out")
    if self.is_moe:
      y, aux = self.moe(self.post_attn_norm(x), segment_ids)
    else:
      y, aux = self.mlp(self.post_attn_norm(x)), {}
    x = constrain(x + y, ("act_batch", "act_seq", "act_embed"))
    return x, aux, cache


def _stacked_block(cfg: ModelConfig, kind: LayerKind, repeats: int, rngs: nnx.Rngs) -> Block:
  """`repeats` independently initialised blocks with parameters stacked on axis 0."""

  @nnx.split_rngs(splits=repeats)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Block(cfg, kind, rngs=rngs)

  return make(rngs)


class Stage(nnx.Module):
  """`repeats` copies of a unit of layer kinds; parameters carry a leading layer axis and the
  forward pass is one `lax.scan`, so compile time does not grow with depth."""

  def __init__(self, cfg: ModelConfig, unit: tuple[LayerKind, ...], repeats: int, *, rngs: nnx.Rngs):
    self.unit = unit
    self.repeats = repeats
    self.remat = cfg.remat
    self.blocks = nnx.List([_stacked_block(cfg, kind, repeats, rngs) for kind in unit])

  def __call__(self, x, cos, sin, segment_ids, positions, caches, cache_meta, inject=None):
    """`inject` `[repeats, len(unit), B, T, E]` (DeepStack): added to each layer's output."""
    graphdef, state = nnx.split(self.blocks)

    def body(x, xs):
      layer_state, layer_caches, layer_inject = xs
      x = checkpoint_name(x, "layer_input")
      blocks = nnx.merge(graphdef, layer_state)
      auxes, new_caches = [], []
      for j, block in enumerate(blocks):
        cache = None if layer_caches is None else {**layer_caches[j], **cache_meta}
        x, aux, cache = block(x, cos, sin, segment_ids, positions, cache)
        if layer_inject is not None:
          x = x + layer_inject[j].astype(x.dtype)
        auxes.append(aux)
        new_caches.append(None if cache is None else {"k": cache["k"], "v": cache["v"]})
      return x, (auxes, None if layer_caches is None else new_caches)

    if self.remat != "none":
      # Inside a scan, CSE cannot merge the recomputation with the forward pass, so no barrier is
      # needed; a one-layer stage is unrolled by XLA, and without the barrier its recomputation
      # may be scheduled early, during the loss's backward pass, adding to its peak.
      body = jax.checkpoint(body, policy=REMAT[self.remat], prevent_cse=self.repeats == 1)
    x, (auxes, new_caches) = jax.lax.scan(body, x, (state, caches, inject))
    return x, auxes, new_caches


class Decoder(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    V, E = cfg.vocab_size, cfg.hidden_size
    pd = dtype_of(cfg.param_dtype)
    self.cfg = cfg
    self.embed = param(rngs, (V, E), ("vocab", "embed"), std=cfg.initializer_range, dtype=pd)
    self.stages = nnx.List([Stage(cfg, unit, repeats, rngs=rngs) for unit, repeats in cfg.stages()])
    self.final_norm = RMSNorm(E, eps=cfg.rms_norm_eps, axis_name="embed", param_dtype=pd)
    if not cfg.tie_word_embeddings:
      self.lm_head = param(rngs, (E, V), ("embed", "vocab"), std=cfg.initializer_range, dtype=pd)

  # -- pieces the training loss uses directly ------------------------------------------------
  def head_weight(self, dtype):
    """The `[E, V]` output projection (the transposed embedding when tied)."""
    w = self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
    return cast(w, dtype)

  def embed_tokens(self, input_ids):
    x = jnp.take(cast(self.embed[...], dtype_of(self.cfg.dtype)), input_ids, axis=0)
    return constrain(x, ("act_batch", "act_seq", "act_embed"))

  def hidden_states(self, input_ids, *, segment_ids=None, positions=None, cache=None, inputs_embeds=None,
                    rope_positions=None, deepstack=None):
    """Final-norm hidden states `[B, T, E]`, MoE aux statistics, and the updated cache.

    Vision-language models pass the merged `inputs_embeds`, multimodal `rope_positions`
    `[B, T, 3]` (positions stay the token order, for masks and the cache) and `deepstack`
    `[k, B, T, E]`, added to the outputs of the first k layers."""
    cfg = self.cfg
    B, T = input_ids.shape
    if segment_ids is None:
      segment_ids = jnp.ones((B, T), jnp.int32)
    if positions is None and cache is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    elif positions is None:  # cache slot minus the row's left padding
      positions = jnp.maximum(cache["index"] + jnp.arange(T, dtype=jnp.int32)[None, :] - cache["start"][:, None], 0)
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    rope, shift = positions if rope_positions is None else rope_positions, None
    if cache is not None and rope_positions is not None:
      # A multimodal prompt's positions do not follow its token count (a picture of h x w
      # tokens spans max(h, w) positions): tokens decoded after it continue from its furthest
      # position + 1 (transformers' rope_deltas), on all three position rows.
      shift = jnp.max(rope_positions, axis=(1, 2)) - jnp.max(positions, axis=1)
    elif cache is not None and "rope_shift" in cache:
      shift = cache["rope_shift"]
      rope = positions + shift[:, None]
    cos, sin = rope_tables(rope, cfg, cfg.rope_dim)
    stage_auxes, new_stage_caches = [], []
    first = 0
    for s, (stage, (unit, repeats)) in enumerate(zip(self.stages, cfg.stages())):
      caches = None if cache is None else cache["stages"][s]
      inject = None
      if deepstack is not None and unit[0].inject:
        layers = deepstack[first:first + repeats * len(unit)]
        inject = layers.reshape((repeats, len(unit)) + layers.shape[1:])
      first += repeats * len(unit)
      meta = None if cache is None else {"index": cache["index"], "start": cache["start"]}
      x, auxes, new_caches = stage(x, cos, sin, segment_ids, positions, caches, meta, inject)
      stage_auxes.append(auxes)
      new_stage_caches.append(new_caches)
    h = self.final_norm(x)
    new_cache = None if cache is None else {"index": cache["index"] + T, "start": cache["start"],
                                            "stages": new_stage_caches}
    if shift is not None:
      new_cache["rope_shift"] = shift
    return h, self._collect_aux(stage_auxes), new_cache

  def logits(self, h):
    logits = h @ self.head_weight(h.dtype)
    return constrain(logits, ("act_batch", "act_seq", "act_vocab"))

  def __call__(self, input_ids, *, segment_ids=None, positions=None, cache=None) -> Output:
    h, aux, cache = self.hidden_states(input_ids, segment_ids=segment_ids, positions=positions, cache=cache)
    return Output(logits=self.logits(h), hidden=h, aux=aux, cache=cache)

  # -- bookkeeping ---------------------------------------------------------------------------
  def moe_layers(self) -> tuple[int, ...]:
    return tuple(i for i in range(self.cfg.num_layers) if self.cfg.is_moe_layer(i))

  def update_router_bias(self, load, rate: float) -> None:
    """Aux-loss-free load balancing (DeepSeek-V3): moves each MoE layer's score-correction bias
    by `rate` towards balance, +rate for experts that got fewer than the mean number of tokens
    and -rate for those that got more. `load` `[num_moe_layers, X]` (layer order, as in the
    aux statistics). Updates the `ModelState` variables in place; no-op without them."""
    if not self.cfg.has_router_state or not rate:
      return
    row = {layer: r for r, layer in enumerate(self.moe_layers())}
    load = load.astype(jnp.float32)
    start = 0
    for stage, (unit, repeats) in zip(self.stages, self.cfg.stages()):
      for j, kind in enumerate(unit):
        if kind.moe:
          rows = jnp.asarray([row[start + r * len(unit) + j] for r in range(repeats)])
          l = load[rows]  # [repeats, X]
          step = rate * jnp.sign(jnp.mean(l, axis=-1, keepdims=True) - l)
          bias = stage.blocks[j].moe.score_bias
          bias[...] = bias[...] + step.astype(bias[...].dtype)
      start += len(unit) * repeats

  def _collect_aux(self, stage_auxes) -> dict:
    """Per-stage, per-slot scan outputs `[repeats, ...]` -> arrays `[num_moe_layers, ...]` in
    layer order."""
    pieces, order = [], []
    start = 0
    for s, (unit, repeats) in enumerate(self.cfg.stages()):
      for j, kind in enumerate(unit):
        if kind.moe:
          pieces.append(stage_auxes[s][j])
          order.extend(start + r * len(unit) + j for r in range(repeats))
      start += len(unit) * repeats
    if not pieces:
      return {}
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *pieces)
    perm = sorted(range(len(order)), key=order.__getitem__)
    if perm != list(range(len(order))):
      stacked = jax.tree.map(lambda a: a[jnp.asarray(perm)], stacked)
    return stacked

  def init_cache(self, batch: int, max_len: int, dtype=None, start=None) -> dict:
    """An empty KV cache of `max_len` slots. `start` `[batch]`: each row's first real slot
    (rows left-padded to a common prompt length); slots before it are never attended to and
    positions count from it."""
    cfg = self.cfg
    dtype = dtype_of(cfg.dtype) if dtype is None else dtype
    if cfg.attention == "mla":
      k_shape, v_shape = mla_cache_shapes(cfg, batch, max_len)
    else:
      k_shape = v_shape = (batch, max_len, cfg.num_kv_heads, cfg.resolved_head_dim)
    stages = []
    for unit, repeats in cfg.stages():
      stages.append([{"k": jnp.zeros((repeats,) + k_shape, dtype), "v": jnp.zeros((repeats,) + v_shape, dtype)}
                     for _ in unit])
    start = jnp.zeros((batch,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
    return {"index": jnp.zeros((), jnp.int32), "start": start, "stages": stages}
