"""Per-family weight tables: Hugging Face key <-> jaxtrain parameter slice, declaratively.

A `Rule` names an HF key template (`{layer}`, `{expert}`), the jaxtrain parameter path (inside
a decoder block for layer rules, from the model root otherwise), which slice of that parameter
the tensor fills (`select`, with `EXPERT` standing for the expert number) and the layout
transform:

  same   identical shape                         (embedding, norms)
  flat   HF tensor is the slice flattened        (q/k/v biases [H*D] -> [H, D])
  t1     HF [out, in] -> transpose, reshape to the slice, whose first dim is `in`
         (q/k/v/gate/up/down/router/lm_head: [H*D, E] -> [E, H, D])
  t2     as t1 with the first two slice dims forming `in` (o_proj [E, H*D] -> [H, D, E])
  pairs  HF [..., 2*I] holding gate/up interleaved (gate_i at 2i, up_i at 2i+1) -> slice
         [..., 2, I] (GPT-OSS fused expert projections and their biases)
  halves HF [..., 2*I] holding gate then up -> slice [..., 2, I] (Qwen3-VL-MoE fused experts)
  xt1    t1 per expert: HF [X, out, in] -> slice [X, in, *out] (fused experts as transformers keeps them)
  conv   HF [out, *in] (a convolution kernel) -> slice [*in, out]

A rule may name an alternative layout (`alt`) that import takes when a tensor's shape matches
it and not the main one (checkpoints that store fused experts transposed); export writes `layout`.

Layers live at `stages/<stage>/blocks/<slot>/...` with the stage's repeat as the leading axis
(`ModelConfig.layer_location`), experts are stacked on the axis after it, and gate/up
projections are fused on a size-2 axis. Vision-language families add the vision tower and
projector: plain rules (`WeightTable.vision`) and `Stack`s of scanned layers (tower blocks,
DeepStack mergers) whose parameters carry the layer as their leading axis. `plan(cfg, table)` expands a `WeightTable` into one
`Entry` per HF tensor, in Hugging Face order. All transforms are transposes and reshapes, so a
round trip is bit-exact.

The rule groups several families share live here; each family module (`converters/families/`)
composes its `WeightTable` from them and its own rules.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from jaxtrain.converters.errors import ConversionError

ALL = slice(None)
EXPERT = "expert"


@dataclass(frozen=True)
class Rule:
  hf: str
  path: str
  layout: str = "same"
  select: tuple = ()
  when: str = "always"
  alt: str = ""  # another on-disk layout import accepts (the shape decides)


@dataclass(frozen=True)
class Stack:
  """`count(cfg)` stacked layers outside the decoder (a vision tower's blocks): rules whose HF
  key has `{layer}` and whose path (under `path`) gets the layer as its leading index."""
  path: str
  count: Callable[[Any], int]
  rules: tuple[Rule, ...]


@dataclass(frozen=True)
class WeightTable:
  """A family's HF tensors: rules outside the decoder layers (`top`: the first is read before
  the layers, the rest after, in Hugging Face order) and inside each layer; a
  vision-language family's tower and projector come first (`vision`, then `stacks`)."""
  top: tuple[Rule, ...]
  layer: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()  # regexes of HF keys that may be present and are skipped
  vision: tuple[Rule, ...] = ()
  stacks: tuple[Stack, ...] = ()

  def ignorable(self, key: str) -> bool:
    return any(re.fullmatch(p, key) for p in self.ignore)


# Predicates deciding whether a rule applies, given the model config and the layer kind.
FEATURES: dict[str, Callable[[Any, Any], bool]] = {
    "always": lambda cfg, kind: True,
    "untied": lambda cfg, kind: not cfg.tie_word_embeddings,
    "qk_norm": lambda cfg, kind: cfg.qk_norm,
    "attention_bias": lambda cfg, kind: cfg.attention_bias,
    "attention_out_bias": lambda cfg, kind: cfg.attention_out_bias,
    "dense": lambda cfg, kind: not kind.moe,
    "moe": lambda cfg, kind: kind.moe,
    "shared_expert": lambda cfg, kind: kind.moe and cfg.shared_expert_intermediate_size > 0,
    "shared_expert_gate": lambda cfg, kind: kind.moe and cfg.shared_expert_intermediate_size > 0 and cfg.shared_expert_gate,
    "attention_sinks": lambda cfg, kind: cfg.attention_sinks,
    "q_full": lambda cfg, kind: not cfg.q_lora_rank,
    "q_lora": lambda cfg, kind: bool(cfg.q_lora_rank),
    "q_lora_bias": lambda cfg, kind: bool(cfg.q_lora_rank) and cfg.attention_bias,
    "expert_bias": lambda cfg, kind: kind.moe and cfg.expert_bias,
    "vit_qkv_bias": lambda cfg, kind: cfg.vision.qkv_bias,
    "vit_qk_norm": lambda cfg, kind: cfg.vision.qk_norm,
    "vit_norm_bias": lambda cfg, kind: cfg.vision.norm == "layer_norm",
    "vit_final_norm": lambda cfg, kind: cfg.vision.final_norm,
}


def reprefix(rules: tuple[Rule, ...], old: str, new: str) -> tuple[Rule, ...]:
  """The same rules with HF keys under another prefix (a language model nested in a VLM)."""
  return tuple(dataclasses.replace(r, hf=new + r.hf[len(old):]) if r.hf.startswith(old) else r for r in rules)

L = "model.layers.{layer}."
TOP = (
    Rule("model.embed_tokens.weight", "embed"),
    Rule("model.norm.weight", "final_norm/scale"),
    Rule("lm_head.weight", "lm_head", "t1", when="untied"),
)
ATTENTION = (
    Rule(L + "input_layernorm.weight", "input_norm/scale"),
    Rule(L + "self_attn.q_proj.weight", "attn/q_proj", "t1"),
    Rule(L + "self_attn.k_proj.weight", "attn/k_proj", "t1"),
    Rule(L + "self_attn.v_proj.weight", "attn/v_proj", "t1"),
    Rule(L + "self_attn.o_proj.weight", "attn/o_proj", "t2"),
    Rule(L + "self_attn.q_proj.bias", "attn/q_bias", "flat", when="attention_bias"),
    Rule(L + "self_attn.k_proj.bias", "attn/k_bias", "flat", when="attention_bias"),
    Rule(L + "self_attn.v_proj.bias", "attn/v_bias", "flat", when="attention_bias"),
    Rule(L + "self_attn.o_proj.bias", "attn/o_bias", when="attention_out_bias"),
    Rule(L + "self_attn.q_norm.weight", "attn/q_norm/scale", when="qk_norm"),
    Rule(L + "self_attn.k_norm.weight", "attn/k_norm/scale", when="qk_norm"),
    Rule(L + "post_attention_layernorm.weight", "post_attn_norm/scale"),
)
DENSE_MLP = (
    Rule(L + "mlp.gate_proj.weight", "mlp/gate_up", "t1", (ALL, 0, ALL), when="dense"),
    Rule(L + "mlp.up_proj.weight", "mlp/gate_up", "t1", (ALL, 1, ALL), when="dense"),
    Rule(L + "mlp.down_proj.weight", "mlp/down", "t1", when="dense"),
)
# Qwen-style MoE (transformers 5 writes per-expert keys on disk, as transformers 4 did).
QWEN_MOE = (
    Rule(L + "mlp.gate.weight", "moe/router", "t1", when="moe"),
    Rule(L + "mlp.experts.{expert}.gate_proj.weight", "moe/gate_up", "t1", (EXPERT, ALL, 0, ALL), when="moe"),
    Rule(L + "mlp.experts.{expert}.up_proj.weight", "moe/gate_up", "t1", (EXPERT, ALL, 1, ALL), when="moe"),
    Rule(L + "mlp.experts.{expert}.down_proj.weight", "moe/down", "t1", (EXPERT,), when="moe"),
)
# Buffers some older checkpoints carry; they hold nothing a model needs.
COMMON_IGNORE = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


@dataclass(frozen=True)
class Entry:
  """One HF tensor <-> one slice of one jaxtrain parameter."""
  key: str
  path: tuple  # flat nnx path of the parameter
  index: tuple  # ints and full slices, one per parameter dimension (or fewer)
  layout: str
  layer: int = -1
  alt: str = ""


def _path(text: str) -> tuple:
  return tuple(text.split("/"))


def plan(cfg, fam: WeightTable) -> list[Entry]:
  """Every HF tensor of a model with config `cfg`, in Hugging Face order."""
  entries = [Entry(r.hf, _path(r.path), (), r.layout, alt=r.alt) for r in fam.vision if FEATURES[r.when](cfg, None)]
  for stack in fam.stacks:
    for i in range(stack.count(cfg)):
      entries += [Entry(r.hf.format(layer=i), _path(stack.path) + _path(r.path), (i,) + r.select, r.layout, alt=r.alt)
                  for r in stack.rules if FEATURES[r.when](cfg, None)]
  entries += [Entry(r.hf, _path(r.path), (), r.layout) for r in fam.top[:1] if FEATURES[r.when](cfg, None)]
  stages = cfg.stages()
  for i in range(cfg.num_layers):
    s, rep, slot = cfg.layer_location(i)
    kind = stages[s][0][slot]
    prefix = ("stages", s, "blocks", slot)
    for r in fam.layer:
      if not FEATURES[r.when](cfg, kind):
        continue
      experts = range(cfg.num_experts) if EXPERT in r.select or "{expert}" in r.hf else [None]
      for x in experts:
        select = tuple(x if v == EXPERT else v for v in r.select)
        entries.append(Entry(r.hf.format(layer=i, expert=x), prefix + _path(r.path), (rep,) + select, r.layout, i,
                             alt=r.alt))
  entries += [Entry(r.hf, _path(r.path), (), r.layout) for r in fam.top[1:] if FEATURES[r.when](cfg, None)]
  return entries


# -- geometry and transforms -----------------------------------------------------------------

def full_index(index: tuple, ndim: int) -> tuple:
  return tuple(index) + (ALL,) * (ndim - len(index))


def slice_shape(param_shape: tuple, index: tuple) -> tuple:
  idx = full_index(index, len(param_shape))
  return tuple(d for d, i in zip(param_shape, idx) if not isinstance(i, int))


def update_geometry(param_shape: tuple, index: tuple) -> tuple[tuple, tuple]:
  """(start indices, update shape with size-1 dims kept) for `lax.dynamic_update_slice`."""
  idx = full_index(index, len(param_shape))
  starts = tuple(i if isinstance(i, int) else 0 for i in idx)
  shape = tuple(1 if isinstance(i, int) else d for d, i in zip(param_shape, idx))
  return starts, shape


def hf_shape(layout: str, sshape: tuple) -> tuple:
  if layout == "same":
    return tuple(sshape)
  if layout == "flat":
    return (math.prod(sshape),)
  if layout in ("pairs", "halves"):
    if len(sshape) < 2 or sshape[-2] != 2:
      raise ConversionError(f"internal: layout {layout!r} needs a [..., 2, I] slice, got {list(sshape)}")
    return tuple(sshape[:-2]) + (2 * sshape[-1],)
  if layout == "conv":
    return (sshape[-1],) + tuple(sshape[:-1])
  if layout == "xt1":
    return (sshape[0], math.prod(sshape[2:]), sshape[1])
  k = {"t1": 1, "t2": 2}[layout]
  return (math.prod(sshape[k:]), math.prod(sshape[:k]))


def to_param(layout: str, w, sshape: tuple, xp=np):
  """HF tensor -> the parameter slice (shape `sshape`); `xp` = numpy or jax.numpy."""
  contiguous = np.ascontiguousarray if xp is np else (lambda a: a)
  if layout in ("same", "flat", "halves"):
    return w.reshape(sshape)
  if layout == "conv":
    return contiguous(xp.moveaxis(w, 0, -1))
  if layout == "xt1":
    return contiguous(xp.swapaxes(w, 1, 2)).reshape(sshape)
  if layout == "pairs":
    return contiguous(xp.swapaxes(w.reshape(tuple(sshape[:-2]) + (sshape[-1], 2)), -1, -2))
  return contiguous(w.T).reshape(sshape)


def to_hf(layout: str, v: np.ndarray) -> np.ndarray:
  """Parameter slice -> HF tensor (inverse of `to_param`)."""
  if layout == "same":
    return v
  if layout == "flat":
    return v.reshape(-1)
  if layout == "halves":
    return v.reshape(tuple(v.shape[:-2]) + (-1,))
  if layout == "conv":
    return np.ascontiguousarray(np.moveaxis(v, -1, 0))
  if layout == "xt1":
    return np.ascontiguousarray(np.swapaxes(v.reshape(v.shape[0], v.shape[1], -1), 1, 2))
  if layout == "pairs":
    return np.ascontiguousarray(np.swapaxes(v, -1, -2)).reshape(tuple(v.shape[:-2]) + (-1,))
  k = {"t1": 1, "t2": 2}[layout]
  shape = v.shape
  return np.ascontiguousarray(v.reshape(math.prod(shape[:k]), math.prod(shape[k:])).T)


def chunk_axis(layout: str, sshape: tuple) -> tuple[int, int] | None:
  """(slice dimension, HF rows per index along it) for filling a slice in row blocks of its HF
  tensor: HF rows are the flattened output dims, whose leading one is the chunked dimension."""
  if layout == "same" and len(sshape) >= 1:
    return 0, 1
  if layout in ("pairs", "halves", "xt1") and len(sshape) > 2:
    return 0, 1
  if layout in ("t1", "t2"):
    k = {"t1": 1, "t2": 2}[layout]
    if len(sshape) > k:
      return k, math.prod(sshape[k + 1:])
  return None


def param_dim(index: tuple, ndim: int, slice_dim: int) -> int:
  """The parameter dimension behind dimension `slice_dim` of `param[index]`."""
  free = [d for d, i in enumerate(full_index(index, ndim)) if not isinstance(i, int)]
  return free[slice_dim]


def adapt_layouts(entries: list[Entry], hf_shapes: dict, shapes: dict[tuple, tuple]) -> list[Entry]:
  """Entries whose tensor (shape in `hf_shapes`) is stored in the rule's alternative layout
  take that layout."""
  out = []
  for e in entries:
    if e.alt and e.key in hf_shapes:
      sshape = slice_shape(shapes[e.path], e.index)
      if tuple(hf_shapes[e.key]) != hf_shape(e.layout, sshape) and tuple(hf_shapes[e.key]) == hf_shape(e.alt, sshape):
        e = dataclasses.replace(e, layout=e.alt)
    out.append(e)
  return out


def check_coverage(entries: list[Entry], shapes: dict[tuple, tuple]) -> None:
  """Every parameter is filled exactly once by the plan (guards the tables themselves)."""
  covered: dict[tuple, int] = {}
  for e in entries:
    if e.path not in shapes:
      raise ConversionError(f"internal: table entry {e.key} targets unknown parameter {'/'.join(map(str, e.path))}")
    covered[e.path] = covered.get(e.path, 0) + math.prod(slice_shape(shapes[e.path], e.index))
  bad = [f"{'/'.join(map(str, p))}: {covered.get(p, 0)} of {math.prod(s)} values" for p, s in shapes.items()
         if covered.get(p, 0) != math.prod(s)]
  if bad:
    raise ConversionError("internal: the weight table does not cover these parameters exactly: " + "; ".join(bad))
