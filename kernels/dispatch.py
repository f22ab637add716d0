"""The `impl` switch shared by every kernel, and the one table of what each backend offers.

`resolve(op, impl)` picks the function for the running backend: "auto" reads `auto_table.AUTO`
(the measured best per platform and device kind); a platform without a row (a PJRT plugin such
as an NPU, or a platform nobody has benchmarked yet) gets the op's pure-JAX reference, with one
log line. A named implementation that cannot run on the backend falls back to the reference,
with one log line. `supports(feature)` answers backend questions asked outside kernels/ (e.g.
whether XLA implements `ragged_all_to_all`), so no other layer compares platform names."""

from __future__ import annotations

import fnmatch
import logging
from typing import Callable

import jax

from jaxtrain.kernels import auto_table

log = logging.getLogger("jaxtrain.kernels")

_REGISTRY: dict[str, dict[str, Callable]] = {}
_REFERENCE: dict[str, str] = {}
# Runtime overrides of the table (set_auto): op -> [(platform, device kind pattern, impl)].
_OVERRIDES: dict[str, list[tuple[str, str, str]]] = {}
_warned: set[tuple[str, str, str]] = set()
# Backend features other layers ask about, and the platforms where XLA has them.
FEATURES: dict[str, tuple[str, ...]] = {
    "ragged_all_to_all": ("gpu", "tpu"),  # lax.ragged_all_to_all (expert-parallel exchange)
}


def register(op: str, impl: str, fn: Callable, *, reference: bool = False) -> None:
  _REGISTRY.setdefault(op, {})[impl] = fn
  if reference:
    _REFERENCE[op] = impl


def set_auto(op: str, platform: str, impl: str, device_kind: str = "*") -> None:
  """Makes "auto" pick `impl` for `op` on `platform` devices matching `device_kind`, ahead of
  `auto_table.AUTO` (for experiments; measured choices belong in the table)."""
  _OVERRIDES.setdefault(op, []).insert(0, (platform, device_kind, impl))


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


def device_kind() -> str:
  return jax.devices()[0].device_kind


def auto_choice(op: str, platform_name: str | None = None, kind: str | None = None) -> str:
  """The implementation "auto" means for `op` on a platform and device kind (default: this
  process's first device): the first matching row of the overrides, then of the table; the
  op's reference when nothing matches."""
  platform_name = platform() if platform_name is None else platform_name
  kind = device_kind() if kind is None else kind
  rows = _OVERRIDES.get(op, []) + auto_table.AUTO.get(op, [])
  for plat, pattern, impl in rows:
    if plat == platform_name and fnmatch.fnmatch(kind, pattern):
      return impl
  for plat, pattern, impl in rows:
    if plat == "*" and fnmatch.fnmatch(kind, pattern):
      return impl
  warn_once(f"{op}: no measured 'auto' choice for platform {platform_name!r} ({kind}); using the pure-JAX "
            f"reference {_REFERENCE[op]!r} (pick another with kernels.{op}=...)")
  return _REFERENCE[op]


def warn_once(message: str) -> None:
  """Logs `message` once per process (fallbacks decided per call)."""
  if ("message", message, "") not in _warned:
    _warned.add(("message", message, ""))
    log.warning("%s", message)


def resolve(op: str, impl: str) -> tuple[str, Callable]:
  """Returns (name, function) for `impl` of `op`. Unknown names are errors; known
  implementations that cannot run on this backend fall back to the reference."""
  table = _REGISTRY[op]
  if impl == "auto":
    impl = auto_choice(op)
  if impl not in table:
    raise ValueError(f"unknown {op} implementation {impl!r}; choose one of {implementations(op)}")
  supported = getattr(table[impl], "supported", None)
  if supported is not None and not supported():
    ref = _REFERENCE[op]
    warn_once(f"{op} impl {impl!r} cannot run on backend {platform()!r}; using {ref!r} instead")
    impl = ref
  return impl, table[impl]
