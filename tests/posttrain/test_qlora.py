"""QLoRA storage: NF4 / int8 blocks dequantize to the nearest code times the block's absmax
(checked against a plain numpy computation), and a quantized model reads them transparently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.models import factory
from jaxtrain.posttrain import qlora
from tests.helpers import tiny_moe
from tests.posttrain.common import tiny_base


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_blocks_dequantize_to_nearest_code(kind):
  w = np.random.default_rng(0).normal(size=(3, 5, 64)).astype(np.float32)
  q = qlora.quantize(jnp.asarray(w), kind, 16)
  blocks = w.reshape(3, 5, 4, 16)
  scale = np.abs(blocks).max(-1, keepdims=True)
  x = blocks / scale
  if kind == "nf4":
    codes = qlora.NF4[np.abs(x[..., None] - qlora.NF4).argmin(-1)]
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (3, 5, 32)
  else:
    codes = np.round(x * 127) / 127
  np.testing.assert_allclose(np.asarray(q[...]), (codes * scale).reshape(w.shape), rtol=1e-6, atol=1e-7)
  assert q.shape == w.shape


def test_quantized_model_reads_its_weights_dequantized():
  cfg = tiny_moe(gmm_impl="xla")
  graphdef, _, _ = factory.abstract_model(cfg)
  params, rest = tiny_base(cfg)
  quantizer = qlora.Quantizer("nf4", 8)
  from jaxtrain.parallel.mesh import make_mesh
  from ml_collections import ConfigDict
  mesh = make_mesh(ConfigDict({"data": 1, "fsdp": -1, "expert": 1, "sequence": 1, "tensor": 1}), jax.devices()[:1])
  sh = quantizer.shardings(params, mesh)
  frozen = quantizer.quantize(jax.tree.map(lambda x: x.copy(), params), sh)
  quantized = [p for p, v in nnx.to_flat_state(frozen) if isinstance(v.get_value(), qlora.QuantizedWeight)]
  assert any("q_proj" in map(str, p) for p in quantized) and any("moe" in map(str, p) for p in quantized)
  dequantized = nnx.from_flat_state([(p, v.replace(v.get_value()[...]) if isinstance(v.get_value(),
                                      qlora.QuantizedWeight) else v) for p, v in nnx.to_flat_state(frozen)])
  ids = jnp.arange(10).reshape(1, 10)
  np.testing.assert_allclose(nnx.merge(graphdef, frozen, rest)(ids).logits,
                             nnx.merge(graphdef, dequantized, rest)(ids).logits, rtol=1e-6, atol=1e-6)
