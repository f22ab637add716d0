"""Logical axis names -> mesh axes: the one table params, optimizer state and activations
take their shardings from. Model code names logical axes only."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

# Parameter axes and activation axes have separate names: the same feature dimension is
# sharded over fsdp as a weight but replicated as an activation (whose batch takes fsdp).
DEFAULT_RULES: dict[str, Any] = {
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "expert": "expert",
    "moe_mlp": "tensor",
    "router": None,
    "lora": "fsdp",  # low-rank projection dims (MLA); fsdp when the other dim could not take it
    # vision towers: small and compute-heavy, so ZeRO-3 over fsdp only (no tensor parallel)
    "vit_embed": "fsdp",
    "vit_heads": None,
    "vit_head_dim": None,
    "vit_mlp": None,
    "adapter_rank": None,  # the rank dimension of LoRA adapter factors (small: never split)
    # activations
    "act_batch": ("data", "fsdp", "expert"),
    "act_seq": "sequence",
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "act_tokens": ("data", "fsdp", "expert", "sequence"),
    "act_vit_batch": ("data", "fsdp", "expert"),  # rows of image patches / tiles
    "act_vit_seq": None,
    "act_vit_embed": None,
}

_rules: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("jaxtrain_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def axis_rules(rules: dict[str, Any]):
  token = _rules.set({**DEFAULT_RULES, **rules})
  try:
    yield
  finally:
    _rules.reset(token)


def current_rules() -> dict[str, Any]:
  return _rules.get()


def _mesh_axes(name: str | None, rules: dict[str, Any]) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(rules)}")
  target = rules[name]
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None = None, mesh=None,
                    rules: dict[str, Any] | None = None) -> PartitionSpec:
  """Maps logical axes to a PartitionSpec. With `shape` and `mesh`, mesh axes of size 1 are
  dropped and a dimension keeps only the mesh axes whose product divides it; a mesh axis is
  used at most once."""
  rules = current_rules() if rules is None else rules
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical):
    axes = [a for a in _mesh_axes(name, rules) if a not in used]
    if mesh is not None:
      axes = [a for a in axes if mesh.shape[a] > 1]
      if shape is not None:
        kept, size = [], 1
        for a in axes:
          if shape[i] % (size * mesh.shape[a]) == 0:
            kept.append(a)
            size *= mesh.shape[a]
        axes = kept
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def _ambient_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def constrain(x, logical: Sequence[str | None]):
  """`with_sharding_constraint` by logical names under the ambient mesh; no-op without one."""
  mesh = _ambient_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))


def named_sharding(mesh, logical: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical, shape, mesh))


def param_logical_axes(variable) -> tuple[str | None, ...]:
  """Logical axes of a parameter (metadata `logical_axes`), including the 'layers' axis that
  stacking the decoder's layers added."""
  axes = tuple(variable.get_metadata().get("logical_axes", ()))
  ndim = len(variable.get_value().shape)
  if len(axes) == ndim - 1:
    axes = ("layers",) + axes
  if len(axes) != ndim:
    raise ValueError(f"parameter of shape {variable.get_value().shape} has logical axes {axes}")
  return axes


def param_shardings(abstract_variables, mesh):
  """NamedSharding per variable (nnx.Param or model state) from its logical axes and the rules."""
  def spec(variable):
    shape = variable.get_value().shape
    return variable.replace(NamedSharding(mesh, logical_to_spec(param_logical_axes(variable), shape, mesh)))

  return jax.tree.map(spec, abstract_variables, is_leaf=lambda x: isinstance(x, nnx.Variable))
