"""Shared by the posttrain tests: one random tiny MoE base per parameter layout, built once per
test session (an XLA program per model build is most of these tests' CPU time)."""

import functools

import jax
from flax import nnx

from jaxtrain.models import factory
from tests.helpers import tiny_moe

# tiny_moe fields that change parameter shapes; configs equal in these share one base
LAYOUT = ("shared_expert_intermediate_size", "decoder_sparse_step")


@functools.cache
def _base(layout: tuple):
  cfg = tiny_moe(**dict(layout))
  return jax.jit(lambda: tuple(nnx.split(factory.create(cfg, 0), nnx.Param, ...)[1:]))()


def tiny_base(cfg):
  """(params, rest of the model state) of factory.create(cfg, 0) for a tiny_moe config."""
  return _base(tuple((k, getattr(cfg, k)) for k in LAYOUT))
