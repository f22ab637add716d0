"""Quantized releases on import: FP8 with 128x128 (or any) block scales (DeepSeek-V3, Kimi-K2)
and MXFP4 experts (GPT-OSS) dequantize to exactly what transformers' own dequantization gives.

Oracles (transformers, pure torch, CPU):
- FP8: `integrations.finegrained_fp8._dequantize_fp8_weight` (the partial-block-aware path) and
  `Fp8Dequantize._dequantize_one` (the loader's op; full blocks; float32 or E8M0 scales).
  transformers cannot load an FP8 checkpoint end to end here (its quantizer needs accelerate),
  so the end-to-end check compares against a transformers model given those dequantized weights.
- MXFP4: `integrations.mxfp4.convert_moe_packed_tensors`, and end to end transformers'
  `from_pretrained(..., quantization_config=Mxfp4Config(dequantize=True))`.
Tolerance: none; both formats dequantize bit-exactly in float32 (one multiplication of a value
with <= 4 significant bits by a float32 block scale, or by a power of two), and MXFP4 values are
exact in bfloat16 too.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

from tests.models.hf_families import DEEPSEEK_V3, build, fp8_quantize, mxfp4_quantize, torch, write_quantized

import jaxtrain
from jaxtrain.converters import ConversionError, export_hf, import_hf, save_hf
from jaxtrain.converters import load as load_lib
from jaxtrain.converters.dequant import fp8_block_dequantize, mxfp4_dequantize
from jaxtrain.converters.safetensors_io import WeightDir
from transformers.integrations.finegrained_fp8 import Fp8Dequantize, _dequantize_fp8_weight
from transformers.integrations.mxfp4 import convert_moe_packed_tensors


def torch_fp8(q: np.ndarray):
  return torch.from_numpy(q.view(np.uint8).copy()).view(torch.float8_e4m3fn)


def test_fp8_block_dequantization_is_bit_exact():
  rng = np.random.default_rng(0)
  # Partial edge blocks in both dimensions (300 = 2 x 128 + 44, 260 = 2 x 128 + 4).
  w = (rng.standard_normal((300, 260)) * rng.uniform(0.01, 3, (300, 1))).astype(np.float32)
  q, s = fp8_quantize(w, (128, 128))
  ref = _dequantize_fp8_weight(torch_fp8(q), torch.from_numpy(s), [128, 128], torch.float32).numpy()
  ours = fp8_block_dequantize(q, s, (128, 128))
  np.testing.assert_array_equal(ours, ref)
  assert np.abs(ours - w).max() <= 0.07 * np.abs(w).max()  # and it is a quantization of w
  # Row blocks as the streaming loader reads them (offsets inside a scale block).
  for r0, r1 in ((0, 7), (120, 141), (255, 300)):
    np.testing.assert_array_equal(fp8_block_dequantize(q[r0:r1], s, (128, 128), row0=r0), ref[r0:r1])
  # Full blocks through the loader's op, float32 scales and E8M0 (uint8 exponent) scales.
  w = rng.standard_normal((256, 384)).astype(np.float32)
  q, s = fp8_quantize(w, (128, 128))
  op = Fp8Dequantize(None)
  np.testing.assert_array_equal(fp8_block_dequantize(q, s),
                                op._dequantize_one(torch_fp8(q), torch.from_numpy(s), torch.float32).numpy())
  e8m0 = rng.integers(110, 135, s.shape).astype(np.uint8)
  np.testing.assert_array_equal(fp8_block_dequantize(q, e8m0),
                                op._dequantize_one(torch_fp8(q), torch.from_numpy(e8m0), torch.float32).numpy())


def test_mxfp4_dequantization_is_bit_exact():
  rng = np.random.default_rng(1)
  blocks = rng.integers(0, 256, (3, 40, 4, 16), dtype=np.uint8)  # every e2m1 code, -0 included
  scales = rng.integers(117, 137, (3, 40, 4), dtype=np.uint8)
  ours = np.swapaxes(mxfp4_dequantize(blocks, scales), 1, 2)  # the logical [X, in, out] layout
  for dtype in (torch.float32, torch.bfloat16):
    ref = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=dtype)
    ref = ref.float().numpy()
    cast = ours if dtype == torch.float32 else ours.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(cast, ref)
  np.testing.assert_array_equal(ours.astype(ml_dtypes.bfloat16).astype(np.float32), ours)  # exact in bf16


def _fp8_quantize_deepseek(src: str, dst: str, block=(16, 16)):
  """DeepSeek-V3's release quantizes every linear projection except the router and lm_head."""
  def convert(key, value):
    if key.endswith("_proj.weight") or key.endswith("kv_a_proj_with_mqa.weight"):
      q, s = fp8_quantize(value.numpy(), block)
      return {key: torch_fp8(q), key + "_scale_inv": torch.from_numpy(s)}
    return None
  return write_quantized(src, dst, convert, {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": list(block)})


def test_fp8_deepseek_import_equals_transformers_dequantization(tmp_path, monkeypatch):
  """A DeepSeek-V3 checkpoint stored as FP8 + block scales (16x16 blocks so the tiny shapes have
  several, partial ones included) loads to exactly the weights transformers' dequantization
  gives, assembled or streamed in row blocks; bf16 export drops the quantization config and
  loads in transformers."""
  import transformers
  from flax import nnx
  src, qdir, ref_dir = str(tmp_path / "fp32"), str(tmp_path / "fp8"), str(tmp_path / "ref")
  build("deepseek_v3", src, seed=7, **DEEPSEEK_V3["ds-qlora-yarn-groups-shared-dense1"])
  tensors = _fp8_quantize_deepseek(src, qdir)
  assert sum(k.endswith("_scale_inv") for k in tensors) > 20
  # The oracle: the same checkpoint in fp32 holding transformers' dequantization of each tensor.
  def dequantized(key, value):
    if key + "_scale_inv" in tensors:
      return {key: _dequantize_fp8_weight(tensors[key], tensors[key + "_scale_inv"], [16, 16], torch.float32)}
    return None
  write_quantized(src, ref_dir, dequantized, None)
  reference = dict(nnx.to_flat_state(nnx.state(jaxtrain.from_pretrained(ref_dir))))
  loaded = jaxtrain.from_pretrained(qdir)
  for path, var in nnx.to_flat_state(nnx.state(loaded)):
    np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(reference[path].get_value()),
                                  err_msg=str(path))
  monkeypatch.setattr(load_lib, "HOST_ASSEMBLY_BYTES", 0)
  monkeypatch.setattr(load_lib, "CHUNK_BYTES", 300)  # a few rows per block: offsets inside scale blocks
  for path, var in nnx.to_flat_state(nnx.state(jaxtrain.from_pretrained(qdir))):
    np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(reference[path].get_value()),
                                  err_msg=str(path))
  monkeypatch.undo()
  out = str(tmp_path / "bf16")
  save_hf(loaded, loaded.cfg, out, dtype="bfloat16",
          base_config=json.load(open(os.path.join(qdir, "config.json"))))
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert "quantization_config" not in cfg and cfg["dtype"] == "bfloat16"
  assert {i.dtype for i in WeightDir(out).infos.values()} == {"BF16"}
  _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def _mxfp4_gpt_oss(tmp_path):
  src, qdir = str(tmp_path / "fp32"), str(tmp_path / "mxfp4")
  build("gpt_oss", src, seed=9, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
        max_position_embeddings=256, rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0,
                                                      "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                                      "original_max_position_embeddings": 32})

  def convert(key, value):  # the release's layout: [experts, out, in / 32, 16] blocks of the transposed weight
    if key.endswith("experts.gate_up_proj") or key.endswith("experts.down_proj"):
      blocks, scales = mxfp4_quantize(value.numpy().transpose(0, 2, 1))
      return {key + "_blocks": torch.from_numpy(blocks), key + "_scales": torch.from_numpy(scales)}
    return None
  tensors = write_quantized(src, qdir, convert, {
      "quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                          "model.embed_tokens", "lm_head"]})
  return qdir, tensors


def test_mxfp4_gpt_oss_import_equals_transformers_loading_it(tmp_path):
  """transformers loads the MXFP4 directory itself (dequantize=True, CPU); jaxtrain's import of
  the same directory holds bit-identical weights (compared tensor by tensor through an fp32
  export) and gives the same logits. A bf16 export holds exactly transformers' bf16
  dequantization and loads in transformers."""
  import transformers

  from tests.converters.conftest import hf_logits_and_loss, jax_logits_and_loss, tokens
  qdir, tensors = _mxfp4_gpt_oss(tmp_path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      qdir, quantization_config=transformers.Mxfp4Config(dequantize=True), dtype=torch.float32,
      attn_implementation="eager").eval()
  model = jaxtrain.from_pretrained(qdir)
  out = str(tmp_path / "fp32_export")
  save_hf(model, model.cfg, out)
  exported, hf_state = WeightDir(out), hf.state_dict()
  assert sorted(exported.infos) == sorted(k for k in hf_state if k != "lm_head.weight" or not model.cfg.tie_word_embeddings)
  for key in exported.infos:
    np.testing.assert_array_equal(exported.read(key), hf_state[key].numpy(), err_msg=key)
  toks = tokens(2, 17, seed=2)
  ref_logits, ref_loss = hf_logits_and_loss(hf, toks)
  logits, loss = jax_logits_and_loss(model, toks)
  print(f"MXFP4 import: max|logits diff| vs transformers' own MXFP4 loading = {np.abs(logits - ref_logits).max():.3g}")
  assert np.abs(logits - ref_logits).max() <= 1e-4 and abs(loss - ref_loss) <= 1e-5 * ref_loss

  ckpt, bf16 = str(tmp_path / "ckpt"), str(tmp_path / "bf16")
  import_hf(qdir, ckpt)
  export_hf(ckpt, bf16, dtype="bfloat16")
  assert "quantization_config" not in json.load(open(os.path.join(bf16, "config.json")))
  w = WeightDir(bf16)
  key = "model.layers.1.mlp.experts.gate_up_proj"
  ref = convert_moe_packed_tensors(tensors[key + "_blocks"], tensors[key + "_scales"], dtype=torch.bfloat16)
  np.testing.assert_array_equal(w.read(key).astype(np.float32), ref.float().numpy())
  _, info = transformers.AutoModelForCausalLM.from_pretrained(bf16, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def test_bad_quantized_tensors_are_named(tmp_path):
  src, qdir = str(tmp_path / "fp32"), str(tmp_path / "q")
  build("deepseek_v3", src, seed=1, **DEEPSEEK_V3["ds-fullq-noshared-bias-plainrope"])
  key = "model.layers.0.self_attn.kv_b_proj.weight"

  def wrong_scale(k, v):
    if k == key:
      q, s = fp8_quantize(v.numpy(), (16, 16))
      return {k: torch_fp8(q), k + "_scale_inv": torch.from_numpy(s[:-1].copy())}
    return None
  write_quantized(src, qdir, wrong_scale, {"quant_method": "fp8", "weight_block_size": [16, 16]})
  with pytest.raises(ConversionError, match=key + "_scale_inv"):
    jaxtrain.from_pretrained(qdir)

  def no_scale(k, v):
    return {k: torch_fp8(fp8_quantize(v.numpy(), (16, 16))[0])} if k == key else None
  write_quantized(src, qdir, no_scale, {"quant_method": "fp8", "weight_block_size": [16, 16]})
  with pytest.raises(ConversionError, match=f"{key} .*dtype F8_E4M3"):
    jaxtrain.from_pretrained(qdir)
