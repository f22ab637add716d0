"""The `impl` switch shared by every kernel, and the one table of what each backend offers.

`resolve(op, impl)` picks the function for the running backend: "auto" is the measured best for
the platform (`set_auto`); a platform without a measured choice (a PJRT plugin such as an NPU,
or a platform nobody has benchmarked yet) gets the op's pure-JAX reference, with one log line.
A named implementation that cannot run on the backend falls back to the reference, with one
log line. `supports(feature)` answers backend questions asked outside kernels/ (e.g. whether XLA
implements `ragged_all_to_all`), so no other layer compares platform names."""

from __future__ import annotations

import logging
from typing import Callable

import jax

log = logging.getLogger("jaxtrain.kernels")

_REGISTRY: dict[str, dict[str, Callable]] = {}
# Per op: which implementation "auto" picks on each platform (from measured results; see
# experiments/RESULTS.md). Platforms not listed use the op's reference.
_AUTO: dict[str, dict[str, str]] = {}
_REFERENCE: dict[str, str] = {}
_warned: set[tuple[str, str, str]] = set()
# Backend features other layers ask about, and the platforms where XLA has them.
FEATURES: dict[str, tuple[str, ...]] = {
    "ragged_all_to_all": ("gpu", "tpu"),  # lax.ragged_all_to_all (expert-parallel exchange)
}


def register(op: str, impl: str, fn: Callable, *, reference: bool = False) -> None:
  _REGISTRY.setdefault(op, {})[impl] = fn
  if reference:
    _REFERENCE[op] = impl


def set_auto(op: str, platform: str, impl: str) -> None:
  _AUTO.setdefault(op, {})[platform] = impl


def implementations(op: str) -> list[str]:
  return sorted(_REGISTRY.get(op, {})) + ["auto"]


def platform() -> str:
  """The running backend's platform name: "cpu", "gpu", "tpu", or a PJRT plugin's own name."""
  return jax.default_backend()


def supports(feature: str, backend: str | None = None) -> bool:
  """Whether `backend` (default: the running one) has `feature` (a key of `FEATURES`)."""
  if feature not in FEATURES:
    raise ValueError(f"unknown backend feature {feature!r}; known: {sorted(FEATURES)}")
  return (backend or platform()) in FEATURES[feature]


def _warn_once(key: tuple[str, str, str], message: str, *args) -> None:
  if key not in _warned:
    _warned.add(key)
    log.warning(message, *args)


def resolve(op: str, impl: str) -> tuple[str, Callable]:
  """Returns (name, function) for `impl` of `op`. Unknown names are errors; known
  implementations that cannot run on this backend fall back to the reference."""
  table = _REGISTRY[op]
  if impl == "auto":
    auto = _AUTO.get(op, {})
    impl = auto.get(platform())
    if impl is None:
      impl = _REFERENCE[op]
      _warn_once((op, "auto", platform()), "%s: no measured 'auto' choice for platform %r; using the pure-JAX "
                 "reference %r (pick another with kernels.%s=...)", op, platform(), impl, op)
  if impl not in table:
    raise ValueError(f"unknown {op} implementation {impl!r}; choose one of {implementations(op)}")
  supported = getattr(table[impl], "supported", None)
  if supported is not None and not supported():
    ref = _REFERENCE[op]
    _warn_once((op, impl, platform()), "%s impl %r cannot run on backend %r; using %r instead", op, impl,
               platform(), ref)
    impl = ref
  return impl, table[impl]
