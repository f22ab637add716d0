"""The `impl` switch shared by every kernel: resolve a requested implementation for the
current backend, falling back to the pure-JAX reference (with one log line) where a kernel
cannot run."""

from __future__ import annotations

import logging
from typing import Callable

import jax

log = logging.getLogger("jaxtrain.kernels")

_REGISTRY: dict[str, dict[str, Callable]] = {}
# Per op: which implementation "auto" picks on each platform (from measured results; see
# experiments/RESULTS.md). Platform "*" covers the platforms not listed (e.g. NPU plugins);
# without it they use the op's reference.
_AUTO: dict[str, dict[str, str]] = {}
_REFERENCE: dict[str, str] = {}
_warned: set[tuple[str, str, str]] = set()


def register(op: str, impl: str, fn: Callable, *, reference: bool = False) -> None:
  _REGISTRY.setdefault(op, {})[impl] = fn
  if reference:
    _REFERENCE[op] = impl


def set_auto(op: str, platform: str, impl: str) -> None:
  _AUTO.setdefault(op, {})[platform] = impl


def implementations(op: str) -> list[str]:
  return sorted(_REGISTRY.get(op, {})) + ["auto"]


def platform() -> str:
  return jax.default_backend()


def auto_impl(op: str, platform_name: str) -> str:
  """What "auto" picks for `op` on `platform_name` ("cpu", "gpu", "tpu", ...)."""
  auto = _AUTO.get(op, {})
  return auto.get(platform_name, auto.get("*", _REFERENCE[op]))


def resolve(op: str, impl: str) -> tuple[str, Callable]:
  """Returns (name, function) for `impl` of `op`. Unknown names are errors; known
  implementations that cannot run on this backend fall back to the reference."""
  table = _REGISTRY[op]
  if impl == "auto":
    impl = auto_impl(op, platform())
  if impl not in table:
    raise ValueError(f"unknown {op} implementation {impl!r}; choose one of {implementations(op)}")
  supported = getattr(table[impl], "supported", None)
  if supported is not None and not supported():
    ref = _REFERENCE[op]
    key = (op, impl, platform())
    if key not in _warned:
      _warned.add(key)
      log.warning("%s impl %r cannot run on backend %r; using %r instead", op, impl, platform(), ref)
    impl = ref
  return impl, table[impl]
