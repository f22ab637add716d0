"""jaxtrain fp32 logits and step-0 loss vs `transformers` fp32 on the same random weights, for
every supported family across configs (tied/untied, GQA ratios, rope variants, sliding windows,
MoE with dense layers interleaved, shared experts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.converters.conftest import CONFIGS, assert_logits_and_loss_match, build_hf, tokens

import jaxtrain
from jaxtrain.converters import load as load_lib


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_loss_match_transformers(name, hf_dir):
  model_type, kwargs = CONFIGS[name]
  hf = build_hf(model_type, hf_dir, seed=len(name), **kwargs)
  model = jaxtrain.from_pretrained(hf_dir, dtype="float32")
  assert_logits_and_loss_match(name, model, hf, tokens(2, 21, seed=len(name)))


def test_in_place_streaming_path_is_identical(hf_dir, monkeypatch):
  """Parameters above the host-assembly threshold are allocated in their sharding and filled in
  place, each HF tensor in row blocks; forcing that path (with tiny blocks) for every parameter
  gives identical values."""
  from flax import nnx
  model_type, kwargs = CONFIGS["qwen3_moe-interleaved-dense"]
  build_hf(model_type, hf_dir, seed=3, **kwargs)
  assembled = nnx.to_flat_state(nnx.state(jaxtrain.from_pretrained(hf_dir), nnx.Param))
  monkeypatch.setattr(load_lib, "HOST_ASSEMBLY_BYTES", 0)
  monkeypatch.setattr(load_lib, "CHUNK_BYTES", 300)  # several row blocks per tensor
  streamed = dict(nnx.to_flat_state(nnx.state(jaxtrain.from_pretrained(hf_dir), nnx.Param)))
  for path, var in assembled:
    np.testing.assert_array_equal(np.asarray(streamed[path].get_value()), np.asarray(var.get_value()), err_msg=str(path))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_safetensors_load_exactly(dtype, hf_dir, tmp_path):
  """bf16/fp16 safetensors (read without torch) become fp32 parameters holding exactly the
  upcast values: exporting them as fp32 gives the half-precision tensors upcast, bit for bit."""
  import torch

  from jaxtrain.converters import save_hf
  from jaxtrain.converters.safetensors_io import WeightDir
  model_type, kwargs = CONFIGS["mixtral-tied-top1"]
  hf = build_hf(model_type, str(tmp_path / "fp32"), seed=5, **kwargs)
  hf.to(getattr(torch, dtype)).save_pretrained(hf_dir)
  with open(f"{hf_dir}/config.json") as f:
    assert json.load(f)["dtype"] == dtype
  model = jaxtrain.from_pretrained(hf_dir)
  save_hf(model, model.cfg, str(tmp_path / "out"))
  half, full = WeightDir(hf_dir), WeightDir(str(tmp_path / "out"))
  assert {i.dtype for i in half.infos.values()} == {"BF16" if dtype == "bfloat16" else "F16"}
  assert sorted(half.infos) == sorted(full.infos)
  for key in half.infos:
    np.testing.assert_array_equal(full.read(key), half.read(key).astype(np.float32), err_msg=key)
