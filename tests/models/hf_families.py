"""DeepSeek-V3 and GPT-OSS oracles: tiny `transformers` models built locally from configs with
random weights (nothing downloaded), and test-side quantizers that write the FP8-block and
MXFP4 formats of the real releases from known weights."""

from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.converters.conftest import hf_config, randomize  # noqa: E402

# name -> transformers config kwargs; each varies the fields that change numerics.
DEEPSEEK_V3 = {
    "ds-qlora-yarn-groups-shared-dense1": dict(
        hidden_size=32, intermediate_size=40, moe_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
        n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1,
        first_k_dense_replace=1, rope_interleave=True, max_position_embeddings=128,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 32, "beta_fast": 32.0,
                         "beta_slow": 1.0}),
    "ds-fullq-noshared-bias-plainrope": dict(
        hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=6, v_head_dim=8,
        n_routed_experts=4, num_experts_per_tok=3, n_group=1, topk_group=1, n_shared_experts=0,
        first_k_dense_replace=0, norm_topk_prob=False, rope_interleave=False, attention_bias=True,
        routed_scaling_factor=1.5, rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
    "ds-k2like-yarn-mscale-2shared-dense2-tied": dict(
        hidden_size=48, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        n_routed_experts=6, num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=2,
        first_k_dense_replace=2, tie_word_embeddings=True, routed_scaling_factor=2.827, max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 32, "beta_fast": 32.0,
                         "beta_slow": 1.0}),
}

GPT_OSS = {
    "oss-alternating-w4-yarn-clamped": dict(
        hidden_size=32, intermediate_size=16, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4, swiglu_limit=0.3, swiglu_alpha=1.5,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32}),
    "oss-full-sliding-sliding-w6-nobias-tied": dict(
        hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, num_local_experts=5, num_experts_per_tok=3, sliding_window=6, attention_bias=False,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"], swiglu_limit=0.5,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "oss-all-sliding-w3-top1": dict(
        hidden_size=48, intermediate_size=16, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        head_dim=8, num_local_experts=4, num_experts_per_tok=1, sliding_window=3, swiglu_limit=1.0,
        layer_types=["sliding_attention", "sliding_attention"], max_position_embeddings=512,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 16.0,
                         "beta_slow": 2.0, "truncate": True, "original_max_position_embeddings": 64}),
}


def build(model_type: str, directory: str | None, seed: int = 0, **kwargs):
  """A random fp32 transformers model (eval mode), saved to `directory` when given. Besides the
  parameters, DeepSeek's e_score_correction_bias buffers get random values (zeros would hide
  a bias that is used for weighting instead of selection only, or not at all)."""
  cfg = hf_config(model_type, **kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
  randomize(model, seed)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, b in model.named_buffers():
      if name.endswith("e_score_correction_bias"):
        b.copy_(0.3 * torch.randn(b.shape, generator=gen))
    for name, p in model.named_parameters():
      if name.endswith("mlp.router.weight"):  # clear-cut top-k choices, as conftest does for .gate
        p.mul_(6.0)
  if cfg.tie_word_embeddings:
    model.tie_weights()
  if directory is not None:
    model.save_pretrained(directory)
  return model


# -- test-side quantizers (the formats of the real releases) ----------------------------------

FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def fp8_quantize(w: np.ndarray, block=(128, 128)) -> tuple[np.ndarray, np.ndarray]:
  """w [R, C] -> (float8_e4m3fn [R, C], float32 scale_inv [ceil(R/br), ceil(C/bc)]), each block
  scaled so its largest magnitude maps to 448 (as DeepSeek's release does)."""
  R, C = w.shape
  br, bc = block
  s = np.zeros((math.ceil(R / br), math.ceil(C / bc)), np.float32)
  q = np.zeros((R, C), ml_dtypes.float8_e4m3fn)
  for i in range(s.shape[0]):
    for j in range(s.shape[1]):
      blk = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc].astype(np.float32)
      s[i, j] = np.float32(max(float(np.abs(blk).max()), 1e-12) / 448.0)
      q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = (blk / s[i, j]).astype(ml_dtypes.float8_e4m3fn)
  return q, s


def mxfp4_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """w [..., C] (C % 32 == 0) -> (blocks [..., C/32, 16] uint8, scales [..., C/32] uint8): per group
  of 32 a power-of-two scale putting the largest magnitude within 6, values rounded to the
  nearest e2m1 code, two codes per byte with the even element in the low nibble."""
  g = w.reshape(*w.shape[:-1], -1, 32).astype(np.float32)
  e = np.ceil(np.log2(np.maximum(np.abs(g).max(-1), 1e-30) / 6.0)).astype(np.int32)
  codes = np.abs((g / np.ldexp(np.float32(1), e)[..., None])[..., None] - FP4).argmin(-1).astype(np.uint8)
  return np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4)), np.ascontiguousarray((e + 127).astype(np.uint8))


def write_quantized(src: str, dst: str, convert, quantization_config: dict | None) -> dict:
  """Copies HF directory `src` to `dst` with tensors replaced by `convert(key, tensor)` (a dict
  of new tensors, or None to keep it) and `quantization_config` in config.json. Returns the
  written tensors."""
  from safetensors.torch import load_file, save_file
  os.makedirs(dst, exist_ok=True)
  tensors = {}
  for key, value in load_file(os.path.join(src, "model.safetensors")).items():
    new = convert(key, value)
    tensors.update({key: value} if new is None else new)
  save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(src, "config.json")) as f:
    cfg = json.load(f)
  if quantization_config is not None:
    cfg["quantization_config"] = quantization_config
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cfg, f)
  return tensors
