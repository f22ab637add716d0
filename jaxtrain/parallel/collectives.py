"""Small shared pieces for the `shard_map` code in parallel/: the ambient mesh, spec entries as
axis tuples, a `shard_map` that works across JAX versions, and varying-axes (vma) helpers."""

from __future__ import annotations

import math
from typing import Any

import jax


def ambient_mesh():
  """The mesh set by `mesh_context` (abstract), or None outside one."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def mesh_size(mesh) -> int:
  return math.prod(mesh.shape.values())


def axes_of(entry: Any) -> tuple[str, ...]:
  """A PartitionSpec entry (None, an axis name, or a tuple of them) as a tuple of names."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def spec_entry(spec, i: int) -> tuple[str, ...]:
  return axes_of(spec[i]) if i < len(spec) else ()


def as_entry(axes: tuple[str, ...]):
  """Inverse of `axes_of`: () -> None, (a,) -> a, (a, b) -> (a, b)."""
  return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def axis_name(axes: tuple[str, ...]):
  """The `axis_name` argument a collective takes for these mesh axes."""
  return axes[0] if len(axes) == 1 else tuple(axes)


def size_of(mesh, axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


# Kernel implementations made of ordinary JAX ops, which type-check under `check_vma`. Others
# (Pallas calls, cuDNN custom calls) declare output types without varying axes and need the
# check off; gradients are right either way (JAX then sums cotangents of replicated inputs at
# the shard_map boundary instead of at the use site).
PURE_JAX_IMPLS = ("xla", "blocked")


def shard_map(f, *, mesh, in_specs, out_specs, check: bool = True):
  """`jax.shard_map` across JAX versions (`check_vma`, older `check_rep`)."""
  if hasattr(jax, "shard_map"):
    try:
      return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check)
    except TypeError:
      return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check)
  from jax.experimental.shard_map import shard_map as legacy  # JAX < 0.6
  return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check)


def varying_axes(x) -> frozenset:
  """The manual mesh axes `x` varies over inside `shard_map` (empty outside)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)  # JAX >= 0.10: ManualAxisType
  if mat is not None and hasattr(mat, "varying"):
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", ()) or ())


def make_varying(x, axes, *, checked: bool = True) -> Any:
  """Marks `x` as varying over `axes` (a no-op for axes it already varies over, and without
  `check_vma`)."""
  if not checked:
    return x
  missing = tuple(a for a in axes if a not in varying_axes(x))
  if not missing:
    return x
  cast = (lambda v, a: jax.lax.pcast(v, a, to="varying")) if hasattr(jax.lax, "pcast") else jax.lax.pvary
  try:
    return cast(x, missing)
  except ValueError:  # some axis already varying (vma not readable on this JAX): one at a time
    for a in missing:
      try:
        x = cast(x, (a,))
      except ValueError:
        pass
    return x


def match_varying(*xs, checked: bool = True):
  """Gives every array the union of their varying axes, so kernels see operands of one
  type; None entries pass through; a no-op without `check_vma`."""
  if not checked:
    return xs
  union = frozenset().union(*(varying_axes(x) for x in xs if x is not None))
  return tuple(None if x is None else make_varying(x, tuple(sorted(union))) for x in xs)


def checks_vma(op: str, impl: str) -> bool:
  """Whether a shard_map around kernel `op` with `impl` can run with `check_vma`."""
  from jaxtrain import kernels
  return kernels.resolve(op, impl)[0] in PURE_JAX_IMPLS
