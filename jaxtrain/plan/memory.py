"""Per-device memory of one train step, predicted before anything is compiled.

    peak = state + max(backward, optimizer)
    state     = parameters + optimizer state + the batch          (exact, from the shardings)
    backward  = saved activations of every layer + invariants + the largest of three moments:
                the last layer's forward   its forward working set + the loss's constants
                the loss's backward        the loss's working set + the embedding / head gradients
                a layer's backward         its backward working set + all gradients
    optimizer = gradients + the update's temporaries

The saved activations are what JAX's autodiff keeps per scan step under the remat policy
(plan/activations.py traces the stage's real unit of layers at one device's shapes). The working
sets are XLA's own: the unit's forward, its forward + backward, and the chunked loss, each
compiled alone for this host (memory_analysis), plus the unit's weights and gradients gathered
unsharded (fsdp); MoE dispatch buffers at the worst routing are inside the compiled unit. A
stage of one repeat (a first dense layer) is unrolled by XLA, whose scheduler then runs its
recomputation early: its recomputed activations count on the later stages' backward.

What it does not model: XLA packs buffers into one heap, and the heap (what memory_analysis
reports) can exceed the peak of live bytes (measured up to ~18 % on XLA:CPU for remat "none";
experiments/validate_plan.py and experiments/RESULTS.md). The two constants below scale the
compiled figures and are 1 (no fit); XLA:GPU schedules differently, which the GPU check measures.
"""

from __future__ import annotations

import dataclasses
from jaxtrain.models import factory
from jaxtrain.models.config import LayerKind
from jaxtrain.plan import activations as acts
from jaxtrain.plan.state import StateBytes, compute_itemsize, state_bytes
from jaxtrain.plan.workload import Candidate, Workload, local_share, traced_model

BACKWARD_TEMPS = 1.0  # scales the layer's compiled forward+backward peak (see the module docstring)
UPDATE_TEMPS = 1.0  # AdamW's update: temporaries worth this many gradients


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device. `total` is the predicted peak."""
  params: int
  grads: int
  opt_state: int
  batch: int
  saved: int  # activations kept for the backward pass, all layers
  saved_per_layer: tuple[tuple[str, int], ...]  # (a stage's unit of layer kinds, bytes per repeat)
  layer_work: int  # the largest layer's backward working set (incl. dispatch buffers, gathered weights)
  moe_dispatch: int  # one MoE layer's routed-expert buffers at the worst routing (part of layer_work)
  gathered_weights: int  # one layer's weights + gradients gathered unsharded (part of layer_work)
  loss: int  # the chunked loss's working set
  invariant: int  # loop-invariant residuals, rotary tables, embeddings' activations
  update: int  # the optimizer update's temporaries
  host: int  # activations offloaded to host memory (offload policies)
  local_tokens: int  # tokens per device per micro-batch
  gathered_per_pass: int  # weight bytes (param dtype) gathered over fsdp per forward pass
  loss_grads: int = 0  # gradients alive during the loss (embedding / head; the stages' come later)
  loss_constants: int = 0  # the loss's [tokens, chunk] constants XLA materialises before the forward ends
  forward_work: int = 0  # the largest layer's forward working set beyond its residuals (+ gathered weights)

  @property
  def state(self) -> int:
    return self.params + self.opt_state + self.batch

  @property
  def backward(self) -> int:
    """The activations' peak, the largest of three moments: the last layer's forward (every
    residual saved, the loss's constants already materialised), the loss's backward (the
    stages' gradient buffers not allocated yet) and a layer's backward (all gradients)."""
    return self.saved + self.invariant + max(self.forward_work + self.loss_constants,
                                             self.loss_grads + self.loss, self.grads + self.layer_work)

  @property
  def optimizer(self) -> int:
    return self.grads + self.update

  @property
  def activations(self) -> int:
    return self.backward - self.grads

  @property
  def total(self) -> int:
    return self.state + max(self.backward, self.optimizer)

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(state=self.state, backward=self.backward, optimizer=self.optimizer, total=self.total)
    out["saved_per_layer"] = dict(self.saved_per_layer)
    return out


def _kind_name(kind: LayerKind) -> str:
  return ("moe" if kind.moe else "dense") + (f"/window {kind.sliding_window}" if kind.sliding_window else "")


def dispatch_path(workload: Workload, candidate: Candidate, gmm: str) -> acts.DispatchPath:
  """The routed-expert path one device runs (parallel/moe/select.py decides the same way)."""
  mesh = candidate.mesh
  outputs_only = gmm != "blocked"
  if mesh.size == 1 and workload.expert_exchange == "auto" and not outputs_only:
    return acts.DispatchPath("blocks")
  if mesh["expert"] > 1:
    return acts.DispatchPath("exchange", mesh["expert"], outputs_only)
  return acts.DispatchPath("sorted", outputs_only=outputs_only)


def dispatch_rows(cfg, path: acts.DispatchPath, tokens: int) -> int:
  """Rows of the routed experts' buffers at the worst routing (every copy to one peer)."""
  K, X = cfg.num_experts_per_tok, cfg.num_experts
  if path.kind == "exchange":
    return path.peers * tokens * min(K, max(X // path.peers, 1))
  if path.kind == "blocks":
    from jaxtrain.kernels.gmm_blocked import default_block_rows
    rows = default_block_rows(tokens * K, X)
    return (-(-tokens * K // rows) + X) * rows
  return tokens * K


def predict(workload: Workload, candidate: Candidate, platform: str, *, abstract_params=None,
            exact: bool = True) -> Memory:
  """The predicted per-device memory of `candidate` running `workload` on `platform`. With
  `exact=False` the layers' figures are interpolated in the token count (the planner's search;
  see activations.layer_memory)."""
  cfg = traced_model(workload, platform, candidate.remat)
  if abstract_params is None:
    abstract_params = factory.abstract_model(cfg)[1]
  stages = cfg.stages()
  state: StateBytes = state_bytes(abstract_params, candidate.mesh, tuple(r for _, r in stages))
  local = local_share(workload, candidate, platform)
  s = compute_itemsize(cfg)
  path = dispatch_path(workload, candidate, "blocked" if platform == "cpu" else "xla")
  host_is_device = platform == "cpu"  # no separate host memory: offloaded residuals stay in RAM

  saved = invariant = host = 0
  per_kind: dict[str, int] = {}
  work = dispatch = gathered_max = hoisted = forward_work = 0
  fsdp = candidate.mesh["fsdp"] * candidate.mesh["data"]
  chunk = local.model.ffn_chunk
  chunked_tokens = local.rows * chunk if chunk and chunk < local.seq else local.tokens  # one FFN call's tokens
  for index, (unit, repeats) in enumerate(stages):
    # One step of the stage's scan runs its whole unit of layers as one checkpointed body
    # (models/decoder.Stage): the unit is what keeps residuals and what its backward recomputes.
    res, peak = acts.layer_memory(local.model, unit, candidate.remat, local.rows, local.seq, path, exact=exact)
    per_unit = res.activations + res.weights // fsdp + (res.offloaded if host_is_device else 0)
    saved += repeats * per_unit
    host += 0 if host_is_device else repeats * res.offloaded
    invariant += res.invariant
    per_kind[" + ".join(_kind_name(k) for k in unit)] = per_unit
    # The unit's forward + backward run alone: its residuals, then its backward's working
    # set with its weight gradients unsharded. Those land in the gradients' buffer directly
    # when nothing shards them over fsdp; otherwise they are reduce-scattered from a
    # temporary, and the forward gathers the weights in the compute dtype.
    layer_params = state.layer_gathered.get(index, 0)
    gathered = layer_params * s // 4 if fsdp > 1 else -layer_params
    # A stage of one repeat is a scan XLA unrolls: nothing then orders its recomputation after the
    # backward of the stages behind it, and XLA:CPU's scheduler runs it early, so its recomputed
    # activations sit on top of the later stages' backward working sets (seen in the step's
    # buffer live ranges: a first dense layer's rematerialised activations at a MoE layer's peak).
    layer_work = max(int(BACKWARD_TEMPS * peak) - res.device, 0) + gathered + hoisted
    forward_work = max(forward_work, acts.forward_temps(local.model, unit, candidate.remat, local.rows, local.seq,
                                                       path, exact=exact) + max(gathered, 0))
    if repeats == 1 and index < len(stages) - 1:
      hoisted += acts.recomputed_bytes(local.model, unit, candidate.remat, local.rows, local.seq, path, exact=exact)
    if layer_work > work:
      work, gathered_max = layer_work, max(gathered, 0)
    for kind in unit:
      if kind.moe:
        dispatch = max(dispatch, dispatch_rows(cfg, path, chunked_tokens) * (cfg.hidden_size + 3 * (
            local.model.moe_intermediate_size)) * s)

  if cfg.vision.enabled:
    # A vision-language model's tower and projector run before the first layer: their residuals
    # stay alive through the language model, and their backward comes last (its working set
    # competes with a layer's).
    res, peak = acts.vision_memory(cfg, local.rows, workload.seq_len)
    saved += res.activations + res.weights // fsdp
    invariant += res.invariant
    per_kind["vision tower"] = res.activations + res.weights // fsdp
    work = max(work, max(peak - res.device, 0))

  V, E = cfg.vocab_size, cfg.hidden_size
  chunk = min(candidate.vocab_chunk, V)
  # The loss's forward + backward working set (per-chunk fp32
  # logits, softmax, their gradient) is XLA's own, the loss compiled alone at one device's
  # tokens. It scans over vocabulary chunks of the LM head (train/loss.py): a scan cannot walk an
  # axis the tensor axis shards, so the SPMD partitioner gathers the head ("involuntary full
  # rematerialization") and every device computes whole [tokens, chunk] logits over the whole
  # vocabulary: the tensor axis does not shrink the loss.
  # The final hidden states and their gradient are counted with the embeddings' activations below.
  # Its inputs (the final hidden states, the head gathered over fsdp) are alive with it; its
  # outputs are the hidden states' gradient (then the layers' carried cotangent, counted below)
  # and the head's gradient, which lands in the gradients' buffer unless fsdp shards it (then it
  # is a temporary, reduce-scattered).
  loss = acts.loss_peak(local.rows, local.seq, E, V, chunk, cfg.dtype)
  loss += E * V * s if fsdp > 1 else -E * V * s
  # XLA:CPU materialises the chunk mask's fill values ([tokens, chunk], -inf and 0) once, early,
  # out of the loss's scan: alive from the forward pass on.
  constants = 2 * local.tokens * chunk * 4
  # Alive throughout: the layers' carried activation (the forward's, then its cotangent) and the
  # rotary tables. The embedding table gathered over fsdp serves the lookup only (its backward is
  # a scatter into the gradient); the head's gathered copy is the loss's.
  embed = 2 * local.tokens * E * s + 2 * local.tokens * cfg.rope_dim * 4
  batch = 5 * local.tokens * 4
  return Memory(params=state.params, grads=state.grads, opt_state=state.opt_state, batch=batch, saved=saved,
                saved_per_layer=tuple(per_kind.items()), layer_work=work, moe_dispatch=dispatch,
                gathered_weights=gathered_max, loss=loss, invariant=invariant + embed,
                update=int(UPDATE_TEMPS * state.grads), host=host, local_tokens=local.tokens,
                gathered_per_pass=gathered_per_pass(state, stages) if fsdp > 1 else 0,
                loss_grads=min(state.embed_gathered // fsdp, state.grads), loss_constants=constants,
                forward_work=forward_work)


def gathered_per_pass(state: StateBytes, stages) -> int:
  return state.embed_gathered + sum(state.layer_gathered.get(i, 0) * repeats for i, (_, repeats) in enumerate(stages))


def format_memory(m: Memory) -> str:
  parts = [("params", m.params), ("grads", m.grads), ("optimizer", m.opt_state), ("saved activations", m.saved),
           ("layer backward", m.layer_work), ("loss", m.loss), ("other", m.invariant + m.batch)]
  text = ", ".join(f"{name} {gib(v)}" for name, v in parts)
  if m.host:
    text += f"; offloaded to host {gib(m.host)}"
  return f"{gib(m.total)} ({text})"


def gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**27 else f"{n / 2**20:.1f} MiB"


__all__ = ["Memory", "dispatch_path", "format_memory", "gib", "predict"]
