"""`model.freeze`: parts of a vision-language model that do not train ("vision", "projector",
"language_model"). Their gradients are stopped in the forward pass (no backward work through a
frozen vision tower), and the optimizer leaves them untouched with no state for them."""

from __future__ import annotations

import jax
import optax

from jaxtrain.models.vlm import part_of


def _key(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def frozen_mask(params, freeze) -> object:
  """A pytree of booleans like `params`: True where the parameter's part is frozen."""
  return jax.tree_util.tree_map_with_path(lambda path, _: part_of(tuple(_key(k) for k in path)) in freeze, params)


def stop_frozen(params, freeze):
  """`params` with gradients stopped for the frozen parts."""
  if not freeze:
    return params
  return jax.tree.map(lambda p, frozen: jax.lax.stop_gradient(p) if frozen else p, params, frozen_mask(params, freeze))


def with_freeze(tx: optax.GradientTransformation, freeze) -> optax.GradientTransformation:
  """`tx` on the trainable parameters; zero updates and no state for the frozen ones."""
  if not freeze:
    return tx
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(params, freeze))  # noqa: E731
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
