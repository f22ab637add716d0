"""The one place that picks the MoE dispatcher from config (exchange, grouped-matmul impl),
platform and the mesh layout.

Exchanges (`mesh.expert_exchange`; `mesh_context(..., expert_exchange=...)` sets it for
everything traced inside, read at trace time):
- "padded": all_to_all of fixed worst-case buffers, any backend;
- "ragged": `lax.ragged_all_to_all`, GPU/TPU only (an error elsewhere, never a silent fallback);
- "ragged_emulated": the ragged exchange over an all-gather stand-in for the collective (P times
  the memory): a reference that checks the ragged offsets where XLA lacks the collective (CPU);
- "auto": ragged on GPU/TPU, padded elsewhere; no exchange at all when the experts are not split.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

from jaxtrain import kernels
from jaxtrain.kernels import dispatch
from jaxtrain.parallel import collectives as col
from jaxtrain.parallel.moe.exchange import PaddedAllToAll, RaggedAllToAll, emulated_ragged_all_to_all
from jaxtrain.parallel.moe.local import LocalBlocks, LocalSorted
from jaxtrain.parallel.moe.protocol import Dispatcher
from jaxtrain.parallel.moe.sharded import ExpertParallel, Layout

EXCHANGES = ("auto", "ragged", "padded", "ragged_emulated")

_exchange: contextvars.ContextVar[str] = contextvars.ContextVar("jaxtrain_expert_exchange", default="auto")
_forced: contextvars.ContextVar[Dispatcher | None] = contextvars.ContextVar("jaxtrain_forced_dispatcher",
                                                                             default=None)


def check_exchange(exchange: str) -> None:
  if exchange not in EXCHANGES:
    raise ValueError(f"expert exchange {exchange!r} is not one of {EXCHANGES}")


@contextlib.contextmanager
def exchange_context(exchange: str):
  """Sets the expert exchange (one of `EXCHANGES`) for MoE layers traced inside."""
  check_exchange(exchange)
  token = _exchange.set(exchange)
  try:
    yield
  finally:
    _exchange.reset(token)


@contextlib.contextmanager
def forced_dispatcher(dispatcher: Dispatcher):
  """MoE layers traced inside use `dispatcher` whatever the mesh: the planner traces one
  device's program (jaxtrain/plan/activations.py) with the dispatcher the mesh would pick."""
  token = _forced.set(dispatcher)
  try:
    yield
  finally:
    _forced.reset(token)


def current_exchange() -> str:
  return _exchange.get()


def ragged_supported(backend: str | None = None) -> bool:
  """Whether XLA implements `ragged_all_to_all` on `backend` (default: the running one)."""
  return kernels.supports("ragged_all_to_all", backend)


def resolve_exchange(exchange: str, backend: str | None = None) -> str:
  """"auto" -> "ragged" where supported, else "padded"; "ragged" where unsupported is an error."""
  check_exchange(exchange)
  backend = backend or dispatch.platform()
  if exchange == "auto":
    return "ragged" if ragged_supported(backend) else "padded"
  if exchange == "ragged" and not ragged_supported(backend):
    raise ValueError(f"expert exchange 'ragged' needs lax.ragged_all_to_all, which the {backend!r} backend does not "
                     "implement (GPU/TPU only); use mesh.expert_exchange='padded' or 'auto' (or 'ragged_emulated', "
                     "an all-gather reference for tests)")
  return exchange


def select(exchange: str, impl: str, layout: Layout | None, *, backend: str | None = None,
           fp8: bool = False) -> Dispatcher:
  """The dispatcher for one MoE call.

  `layout` (sharded.layout) None: this device's view, where the grouped-matmul impl decides:
  if `impl` resolves to "blocked" (what "auto" is on CPU), LocalBlocks fuses dispatch, compute
  and combine into padded blocks; otherwise LocalSorted sorts and calls the grouped matmul.
  Otherwise a shard_map (ExpertParallel) around LocalSorted when the experts are not split (or
  "auto" over a size-1 expert axis), else around the exchange `exchange` resolves to on
  `backend` (default: the running one); there the per-device compute is always the grouped
  matmul (`impl` "blocked" = `gmm_blocked`). The gmm kernel resolves for the running backend.
  Experts with FP8 GEMMs (`fp8`) always take the staged path (FP8 runs through the grouped
  matmul, which the fused blocked FFN does not have); LoRA adapters run in either."""
  check_exchange(exchange)
  if _forced.get() is not None:
    return _forced.get()
  if layout is None:
    return LocalBlocks() if kernels.resolve("gmm", impl)[0] == "blocked" and not fp8 else LocalSorted()
  checked = col.checks_vma("gmm", impl)
  if not layout.ep_axes or (exchange == "auto" and layout.ep_size == 1):
    return ExpertParallel(LocalSorted(), layout, checked)
  axis, peers = col.axis_name(layout.ep_axes), layout.ep_size
  kind = resolve_exchange(exchange, backend)
  if kind == "padded":
    inner = PaddedAllToAll(axis, peers)
  else:
    a2a = emulated_ragged_all_to_all if kind == "ragged_emulated" else jax.lax.ragged_all_to_all
    inner = RaggedAllToAll(axis, peers, a2a, checked)
  return ExpertParallel(inner, layout, checked)
