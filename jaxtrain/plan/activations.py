"""Activation memory of one step of a stage's layer scan (its unit of layer kinds, one or more
real `Block`s, checkpointed together with the remat policy as `decoder.Stage` does), at one
device's shapes: the residuals its VJP keeps (JAX's own autodiff,
traced: the activations the scanned forward pass stacks for the backward pass) and the peak of
its forward + backward pass (the layer alone compiled by XLA for this host; nothing runs or is
allocated). This works at any size and for any architecture the model code can express (a new
block option, LoRA, FP8, a vision tower: whatever autodiff keeps and XLA allocates is counted).

Residuals are classified by what they depend on: the layer input (activations: one copy per
layer), only the weights (e.g. bf16 copies of fp32 weights: per layer, sharded like the
weights), only the rotary tables / segment ids / positions (loop-invariant: the scan computes
them once) or nothing new (the weights and tables themselves, constants). Offloading policies put
residuals in host memory; they are counted separately.

One device's shapes: the rows and tokens of a micro-batch on one device (sequence parallel
splits the tokens; Ulysses attention then sees all tokens for a share of the heads, the same
number of elements), heads and MLP widths divided by the tensor axis. MoE layers run the
routed experts the way the mesh does on each device (`parallel.moe.forced_dispatcher`): one
device's padded blocks (the CPU path), sort + grouped matmul (experts not split), or an
exchange with the `expert` peers at its worst-case buffer sizes, traced as `jax.vmap` over the
peers (one device's share is the total over the peers).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.extend.core import Literal

from jaxtrain.models.config import LayerKind, ModelConfig
from jaxtrain.models.decoder import Block
from jaxtrain.models.layers import remat_policy
from jaxtrain.models.layers import dtype_of
from jaxtrain.models.rope import rope_tables
from jaxtrain.parallel.moe import ExpertFFN, LocalBlocks, LocalSorted, PaddedAllToAll, forced_dispatcher

# Dependence flags of traced values.
_ACT, _WEIGHT, _CONST, _PEERS = 1, 2, 4, 8  # _PEERS: carries the vmapped peer axis
_EXPERT_PARAMS = ("gate_up", "down", "gate_up_bias")
_SAME_BUFFER = frozenset(("reshape", "squeeze", "expand_dims", "transpose"))  # the routed experts' weights (split over `expert`)


@dataclasses.dataclass(frozen=True)
class Residuals:
  """Bytes one layer keeps for its backward pass, by what they depend on."""
  activations: int  # depend on the layer input: one copy per layer, on device
  weights: int  # depend only on the weights (per layer, sharded like the weights)
  invariant: int  # depend only on rotary tables / segments / positions: once per stage
  offloaded: int  # kept in host memory (offloading policies)

  @property
  def device(self) -> int:
    return self.activations + self.weights + self.invariant


@dataclasses.dataclass(frozen=True)
class DispatchPath:
  """How one MoE layer's routed experts run on one device."""
  kind: str  # "blocks" (one device's padded blocks, CPU), "sorted" (experts not split), "exchange"
  peers: int = 1  # devices sharing the experts (exchange)
  # The grouped matmuls allocate only their outputs, as accelerator kernels (ragged_dot, Pallas)
  # do; this host's blocked kernel would also copy each block's expert weights.
  outputs_only: bool = False

  def dispatcher(self):
    if self.kind == "blocks":
      return LocalBlocks()
    inner = LocalSorted() if self.kind == "sorted" else PaddedAllToAll("peers", self.peers)
    return _OutputsOnly(inner) if self.outputs_only else inner


@jax.custom_vjp
def _outputs_only_gmm(lhs, rhs, group_sizes):
  """The buffers of a grouped matmul `[m, k] x [g, k, n] -> [m, n]` and of its gradients (`[m, k]`
  and a full `[g, k, n]`), without their arithmetic: one group's matmul stands for all. For
  memory analysis only: the values are wrong."""
  return (lhs @ rhs[0]).astype(lhs.dtype)


def _outputs_only_fwd(lhs, rhs, group_sizes):
  return _outputs_only_gmm(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)  # a kernel's residuals


def _outputs_only_bwd(res, grad):
  lhs, rhs, group_sizes = res
  d_rhs = jnp.zeros(rhs.shape, rhs.dtype).at[0].set((lhs.T @ grad).astype(rhs.dtype))
  return (grad @ rhs[0].T).astype(lhs.dtype), d_rhs, None


_outputs_only_gmm.defvjp(_outputs_only_fwd, _outputs_only_bwd)


class _OutputsOnlyFFN(ExpertFFN):
  def _gmm(self, rows, w, group_sizes):
    return _outputs_only_gmm(rows, w, group_sizes)


@dataclasses.dataclass(frozen=True)
class _OutputsOnly:
  """A dispatcher whose expert compute allocates what accelerator grouped matmuls do."""
  inner: object

  def __call__(self, x, routing, experts: ExpertFFN):
    fields = {f.name: getattr(experts, f.name) for f in dataclasses.fields(experts)}
    return self.inner(x, routing, _OutputsOnlyFFN(**fields))


def _nbytes(aval) -> int:
  return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def _on_host(aval) -> bool:
  space = getattr(aval, "memory_space", None)
  return space is not None and "host" in str(space).lower()


def residuals_of(fn, args, kinds, peers: int = 1) -> Residuals:
  """Residuals of `jax.vjp(fn, *args)`, classified by the dependence of each on the argument
  groups: `kinds[i]` (an int, or a pytree of ints matching `args[i]`) flags `args[i]` with
  _ACT, _WEIGHT or _CONST, or-ed with _PEERS where the value carries a vmapped axis of `peers`
  devices (such residuals count 1/peers per device)."""
  closed = jax.make_jaxpr(lambda *a: jax.vjp(fn, *a)[1])(*args)
  jaxpr = closed.jaxpr
  flags: dict = {}
  invars = iter(jaxpr.invars)
  for arg, kind in zip(args, kinds):
    leaves = jax.tree.leaves(arg)
    kind_leaves = [kind] * len(leaves) if isinstance(kind, int) else jax.tree.leaves(kind)
    for k in kind_leaves:
      flags[next(invars)] = k
  root: dict = {}  # a reshaped (or transposed) value is the same buffer to XLA
  for eqn in jaxpr.eqns:
    f = 0
    for v in eqn.invars:
      if not isinstance(v, Literal):
        f |= flags.get(v, 0)
    for v in eqn.outvars:
      flags[v] = f
    if eqn.primitive.name in _SAME_BUFFER and not isinstance(eqn.invars[0], Literal):
      root[eqn.outvars[0]] = root.get(eqn.invars[0], eqn.invars[0])
  inputs = set(jaxpr.invars)
  totals = dict(activations=0, weights=0, invariant=0, offloaded=0)
  seen = set()
  for v in jaxpr.outvars:
    if isinstance(v, Literal) or not hasattr(getattr(v, "aval", None), "shape"):
      continue
    v = root.get(v, v)
    if v in seen:
      continue
    seen.add(v)
    f = flags.get(v, 0)
    size = _nbytes(v.aval) // (peers if f & _PEERS else 1)
    if _on_host(v.aval):
      totals["offloaded"] += size
    elif v in inputs:
      if f & _ACT:  # the layer input itself: the scan stacks one copy per layer
        totals["activations"] += size
    elif f & _ACT:
      totals["activations"] += size
    elif f & _WEIGHT:
      totals["weights"] += size
    elif f & _CONST:
      totals["invariant"] += size
    # else a constant (zeros, iota): XLA materialises it where it is used, not as a residual
  return Residuals(**totals)


def _checkpointed(fn, policy: str):
  pol = remat_policy(policy)
  return fn if pol is None else jax.checkpoint(fn, policy=pol, prevent_cse=False)


def _is_expert_weight(path, _value) -> bool:
  keys = [str(getattr(k, "key", k)) for k in path]
  return len(keys) >= 2 and keys[-2] == "moe" and keys[-1] in _EXPERT_PARAMS


def as_unit(kind) -> tuple[LayerKind, ...]:
  """A layer kind, or a stage's unit of layer kinds (what one step of its scan runs), as a unit."""
  return (kind,) if isinstance(kind, LayerKind) else tuple(kind)


def _layer_program(cfg: ModelConfig, kind, policy: str, rows: int, seq: int, path: DispatchPath):
  """(function, abstract arguments, their dependence flags, peers) of one step of the decoder's
  layer scan on one device: the stage's whole unit of layers (`kind`: one LayerKind or a tuple),
  checkpointed as one body the way `decoder.Stage` does, so a unit's layers recompute and
  backpropagate together."""
  unit = as_unit(kind)
  blocks = nnx.eval_shape(lambda: nnx.List([Block(cfg, k, rngs=nnx.Rngs(0)) for k in unit]))
  graphdef, experts, rest = nnx.split(blocks, _is_expert_weight, ...)
  dtype = dtype_of(cfg.dtype)
  P = path.peers if path.kind == "exchange" and any(k.moe for k in unit) else 1

  def layer(experts, rest, x, tables):  # one step of the decoder's layer scan (models/decoder.py)
    cos, sin, seg, pos = tables
    x = checkpoint_name(x, "layer_input")
    losses = 0.0
    with forced_dispatcher(path.dispatcher()):
      for block in nnx.merge(graphdef, experts, rest):
        x, aux, _ = block(x, cos, sin, seg, pos, None)
        losses = losses + sum(jnp.sum(v) for k, v in aux.items() if k.endswith("loss"))
    return x, losses

  x = jax.ShapeDtypeStruct((rows, seq, cfg.hidden_size), dtype)
  ids = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
  cos, sin = jax.eval_shape(lambda p: rope_tables(p, cfg, cfg.rope_dim), ids)
  tables = (cos, sin, ids, ids)
  fn = _checkpointed(layer, policy)
  if P == 1:
    return fn, (experts, rest, x, tables), (_WEIGHT, _WEIGHT, _ACT, _CONST), 1
  # One device of P: its share of the experts, its own tokens; the exchange's collectives run
  # over the vmapped axis "peers".
  lead = lambda a: jax.ShapeDtypeStruct((P, a.shape[0] // P) + a.shape[1:], a.dtype)  # noqa: E731
  batched = lambda a: jax.ShapeDtypeStruct((P,) + a.shape, a.dtype)  # noqa: E731
  fn = jax.vmap(fn, in_axes=(0, None, 0, 0), axis_name="peers", axis_size=P)
  return (fn, (jax.tree.map(lead, experts), rest, batched(x), jax.tree.map(batched, tables)),
          (_WEIGHT | _PEERS, _WEIGHT, _ACT | _PEERS, _CONST | _PEERS), P)


@functools.lru_cache(maxsize=1024)
def block_residuals(cfg: ModelConfig, kind: LayerKind | tuple[LayerKind, ...], policy: str, rows: int, seq: int,
                    path: DispatchPath = DispatchPath("blocks")) -> Residuals:
  """Residuals of one layer of `kind` (the real Block) under remat `policy`, for a micro-batch
  of `rows` x `seq` tokens on one device (`cfg` at one device's widths, all experts), its MoE
  running the routed experts as `path` does."""
  fn, args, kinds, P = _layer_program(cfg, kind, policy, rows, seq, path)
  return residuals_of(fn, args, kinds, peers=P)


@functools.lru_cache(maxsize=1024)
def block_peak(cfg: ModelConfig, kind: LayerKind | tuple[LayerKind, ...], policy: str, rows: int, seq: int,
               path: DispatchPath = DispatchPath("blocks")) -> int:
  """Peak bytes above its inputs while one layer runs forward and backward on one device: its
  residuals, its backward's working set (recomputation, gradient temporaries, MoE dispatch
  buffers) and its weights' gradients, unsharded. XLA itself says: the layer's program is
  compiled for this host's backend (nothing runs, nothing is allocated) and its buffer
  assignment read (`memory_analysis()`: temporaries + outputs); a vmapped exchange counts one
  peer's share."""
  fn, args, _, P = _layer_program(cfg, kind, policy, rows, seq, path)

  def forward_backward(*a):
    out, vjp = jax.vjp(fn, *a)
    return vjp(jax.tree.map(jnp.ones_like, out))

  stats = jax.jit(forward_backward).lower(*args).compile().memory_analysis()
  return (int(stats.temp_size_in_bytes) + int(stats.output_size_in_bytes)) // P


@functools.lru_cache(maxsize=1024)
def block_forward_temps(cfg: ModelConfig, kind, policy: str, rows: int, seq: int,
                        path: DispatchPath = DispatchPath("blocks")) -> int:
  """Bytes of one layer's (or unit's) forward pass beyond its inputs and the residuals it
  returns: the intermediates it does not keep, the transient working set the last layer's
  forward adds to every residual saved so far (XLA's memory analysis of the forward alone)."""
  fn, args, _, P = _layer_program(cfg, kind, policy, rows, seq, path)
  stats = jax.jit(lambda *a: jax.vjp(fn, *a)).lower(*args).compile().memory_analysis()
  return int(stats.temp_size_in_bytes) // P


def forward_temps(cfg: ModelConfig, kind, policy: str, rows: int, seq: int, path: DispatchPath, *,
                  exact: bool = True) -> int:
  """`block_forward_temps`, scaled in the token count when not `exact` (as `layer_memory`)."""
  if exact or cfg.attention_impl == "xla":
    return block_forward_temps(cfg, kind, policy, rows, seq, path)
  return interpolated(lambda r, t: block_forward_temps(cfg, kind, policy, r, t, path), cfg, rows, seq)


REFERENCE_TOKENS = 4096  # where `layer_memory` traces when it scales


@functools.lru_cache(maxsize=256)
def _layer_weight_bytes(cfg: ModelConfig, kind, path: DispatchPath) -> int:
  """Bytes of one layer's (or unit's) weights at one device's widths (their gradients do not
  grow with tokens)."""
  unit = as_unit(kind)
  block = nnx.eval_shape(lambda: nnx.List([Block(cfg, k, rngs=nnx.Rngs(0)) for k in unit]))
  P = path.peers if path.kind == "exchange" and any(k.moe for k in unit) else 1
  total = 0
  for path_, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(block))[0]:
    size = _nbytes(leaf)
    total += size // P if _is_expert_weight(path_, leaf) else size
  return total


def layer_memory(cfg: ModelConfig, kind: LayerKind | tuple[LayerKind, ...], policy: str, rows: int, seq: int, path: DispatchPath, *,
                 exact: bool = True) -> tuple[Residuals, int]:
  """(`block_residuals`, `block_peak`) of one layer. With `exact=False` both are scaled in the
  token count from one trace of a row of REFERENCE_TOKENS (activations, dispatch buffers and
  blockwise attention grow linearly with tokens; weight-derived residuals and the weights'
  gradients do not), so a search over meshes and micro-batch splits traces each layer once
  instead of once per shape (a chunked MLP / MoE: two traces). Attention with the XLA reference
  kernel (memory quadratic in the sequence) is always traced exactly."""
  # Compiled alone, a layer's recomputation is its forward pass itself (XLA merges the two), so
  # its forward+backward peak does not depend on the remat policy (within 2% on the validation
  # cases): one compile per shape serves every policy.
  plain = cfg.replace(remat="none")
  if exact or cfg.attention_impl == "xla":
    return (block_residuals(cfg, kind, policy, rows, seq, path), block_peak(plain, kind, "none", rows, seq, path))
  fixed = _layer_weight_bytes(plain, kind, path)
  peak = interpolated(lambda r, t: block_peak(plain, kind, "none", r, t, path), cfg, rows, seq, fixed)
  ref_tokens = _reference_tokens(cfg, seq)
  scale = rows * seq / ref_tokens
  ref = block_residuals(cfg, kind, policy, 1, ref_tokens, path)
  res = Residuals(activations=int(ref.activations * scale), weights=ref.weights,
                  invariant=int(ref.invariant * scale), offloaded=int(ref.offloaded * scale))
  return res, peak


def _ffn_chunk(cfg: ModelConfig, seq: int) -> int:
  """The MLP / MoE chunk a row of `seq` tokens runs in (0: the whole row, as models/mlp.in_chunks)."""
  c = cfg.ffn_chunk
  return c if c and seq > c and seq % c == 0 else 0


def _reference_tokens(cfg: ModelConfig, seq: int) -> int:
  chunk = _ffn_chunk(cfg, seq)
  return 2 * chunk if chunk else REFERENCE_TOKENS


def interpolated(measure, cfg: ModelConfig, rows: int, seq: int, fixed: int = 0) -> int:
  """`measure(rows, seq)` (bytes of a traced shape) at `rows` x `seq` from traces of one row: it
  grows linearly with the tokens beyond `fixed` (what does not depend on them). An MLP / MoE in
  sequence chunks grows with rows x chunk and the rest of the layer with rows x seq: two traces,
  2 and 4 chunks long, give both parts."""
  chunk = _ffn_chunk(cfg, seq)
  if not chunk:
    return int(fixed + max(measure(1, REFERENCE_TOKENS) - fixed, 0) * rows * seq / REFERENCE_TOKENS)
  t1, t2 = 2 * chunk, 4 * chunk
  p1, p2 = measure(1, t1), measure(1, t2)
  per_token = max(p2 - p1, 0) / (t2 - t1)
  per_row = max(p1 - fixed - per_token * t1, 0)
  return int(fixed + rows * (per_row + per_token * seq))


@functools.lru_cache(maxsize=256)
def _loss_peak(rows: int, seq: int, hidden: int, vocab: int, chunk: int, dtype: str) -> int:
  from jaxtrain.train.loss import token_losses
  h = jax.ShapeDtypeStruct((rows, seq, hidden), dtype_of(dtype))
  w = jax.ShapeDtypeStruct((hidden, vocab), dtype_of(dtype))
  targets = jax.ShapeDtypeStruct((rows, seq), jnp.int32)

  def forward_backward(h, w, targets):
    out, vjp = jax.vjp(lambda h, w: jnp.sum(token_losses(h, w, targets, vocab_chunk=chunk)), h, w)
    return vjp(jnp.ones_like(out))

  stats = jax.jit(forward_backward).lower(h, w, targets).compile().memory_analysis()
  return int(stats.temp_size_in_bytes) + int(stats.output_size_in_bytes)


def loss_peak(rows: int, seq: int, hidden: int, vocab: int, chunk: int, dtype: str) -> int:
  """Peak bytes above its inputs of the chunked cross-entropy's forward + backward
  (train/loss.py) on one device: the per-chunk fp32 logits, their softmax and gradient, the
  hidden states' and head's gradients. XLA says, as for the layers (the loss compiled alone for
  this host, at the exact shape: a small program, about 2 s to compile; its buffers do not grow
  linearly with the tokens, since XLA keeps more [tokens, chunk] copies as they grow)."""
  return _loss_peak(rows, seq, hidden, vocab, chunk, dtype)


def _vision_program(cfg: ModelConfig, rows: int, seq: int):
  """(function, abstract arguments, flags) of a vision-language model's vision tower and projector
  (`encode`) on one device's rows: the per-row vision inputs at the model's row capacity."""
  from jaxtrain.models import factory
  from jaxtrain.models.vision.inputs import model_shapes
  graphdef, params, rest = factory.abstract_model(cfg)
  inputs = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in model_shapes(cfg, rows, seq).items()
            if k != "rope_positions"}

  def encode(params, inputs):
    return nnx.merge(graphdef, params, rest).encode(inputs, rows)

  return encode, (params, inputs), (_WEIGHT, _ACT)


@functools.lru_cache(maxsize=64)
def vision_memory(cfg: ModelConfig, rows: int, seq: int) -> tuple[Residuals, int]:
  """(residuals, forward + backward peak) of a vision-language model's vision tower and projector
  for `rows` rows of `seq` tokens on one device, as `block_residuals` / `block_peak` measure a
  layer (the tower's own remat policy applies inside it). Its residuals stay alive through the
  language model's forward and backward; its backward runs last."""
  fn, args, kinds = _vision_program(cfg, rows, seq)
  res = residuals_of(fn, args, kinds)

  def forward_backward(*a):
    out, vjp = jax.vjp(fn, *a)
    return vjp(jax.tree.map(jnp.ones_like, out))

  stats = jax.jit(forward_backward).lower(*args).compile().memory_analysis()
  return res, int(stats.temp_size_in_bytes) + int(stats.output_size_in_bytes)


def recomputed_bytes(cfg: ModelConfig, kind, policy: str, rows: int, seq: int, path: DispatchPath, *,
                     exact: bool = True) -> int:
  """Bytes of activations the backward pass of one layer (or unit) recomputes under `policy`:
  what it would keep without remat, less what the policy keeps."""
  if policy == "none":
    return 0
  if exact or cfg.attention_impl == "xla":
    full = block_residuals(cfg, kind, "none", rows, seq, path).activations
    kept = block_residuals(cfg, kind, policy, rows, seq, path).activations
    return max(full - kept, 0)
  return interpolated(lambda r, t: recomputed_bytes(cfg, kind, policy, r, t, path), cfg, rows, seq)


__all__ = ["DispatchPath", "REFERENCE_TOKENS", "Residuals", "as_unit", "block_forward_temps", "block_peak",
           "block_residuals", "forward_temps", "interpolated", "layer_memory", "loss_peak", "recomputed_bytes", "residuals_of",
           "vision_memory"]
