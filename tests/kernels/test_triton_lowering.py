"""The compiled GPU path lowers, checked without a GPU: `jax.export` for platform "cuda" runs
the Pallas -> Triton lowering on any host. This catches what interpret mode cannot (tile
shapes Triton rejects, unsupported ops, the backend choice) before the GPU check runs; it does
not compile Triton to PTX, so register/shared-memory limits are only checked on a GPU."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from jaxtrain.kernels import interpret_mode
from jaxtrain.kernels.flash_attention import flash_attention
from jaxtrain.kernels.gmm_pallas import gmm_pallas, tgmm_pallas

TRITON_CALL = "__gpu$xla.gpu.triton"


def lower_for_cuda(fn, *avals) -> str:
  with interpret_mode(False):
    try:
      exported = export.export(jax.jit(fn), platforms=["cuda"],
                               disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*avals)
    except (ImportError, ModuleNotFoundError) as e:  # a jaxlib without the Triton dialect
      pytest.skip(f"no Triton lowering in this jaxlib: {e}")
  return exported.mlir_module()


def kernels_in(text: str) -> list[str]:
  assert TRITON_CALL in text, "kernels must select the Triton backend explicitly"
  return sorted(set(re.findall(r'name = "(jaxtrain_[a-z_]+)"', text)))


def spec(shape, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("transpose_rhs", [False, True])
def test_gmm_lowers_to_triton(dtype, transpose_rhs):
  rhs = spec((16, 384, 520) if transpose_rhs else (16, 520, 384), dtype)

  def loss(a, b, s):
    return jnp.sum(gmm_pallas(a, b, s, transpose_rhs=transpose_rhs).astype(jnp.float32))

  text = lower_for_cuda(jax.grad(loss, argnums=(0, 1)), spec((1000, 520), dtype), rhs, spec((16,), jnp.int32))
  assert kernels_in(text) == ["jaxtrain_gmm", "jaxtrain_tgmm"]


def test_tgmm_grad_lowers_to_triton():
  def loss(a, b, s):
    return jnp.sum(tgmm_pallas(a, b, s).astype(jnp.float32) ** 2)

  text = lower_for_cuda(jax.grad(loss, argnums=(0, 1)), spec((300, 64)), spec((300, 96)), spec((8,), jnp.int32))
  assert kernels_in(text) == ["jaxtrain_gmm", "jaxtrain_tgmm"]


@pytest.mark.parametrize("D,Dv,dtype", [(128, 128, jnp.bfloat16), (192, 128, jnp.bfloat16), (40, 24, jnp.float32)])
def test_flash_attention_lowers_to_triton(D, Dv, dtype):
  B, T, H, KVH = 2, 300, 8, 2

  def loss(q, k, v, seg, sinks):
    out = flash_attention(q, k, v, q_segment_ids=seg, sinks=sinks, sliding_window=128)
    return jnp.sum(out.astype(jnp.float32))

  text = lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2, 4)), spec((B, T, H, D), dtype), spec((B, T, KVH, D), dtype),
                        spec((B, T, KVH, Dv), dtype), spec((B, T), jnp.int32), spec((H,), jnp.float32))
  assert kernels_in(text) == ["jaxtrain_flash_bwd_dkv", "jaxtrain_flash_bwd_dq", "jaxtrain_flash_fwd"]
