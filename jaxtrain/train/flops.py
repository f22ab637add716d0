"""Model FLOPs per token and model FLOPs utilisation (MFU).

Training FLOPs per token = 3 x forward FLOPs (the backward pass costs two forwards; rematerialised
recomputation is not counted, as usual for MFU). Forward FLOPs per token = 2 x (multiply-adds):

- every dense matmul: attention projections (MLA: its low-rank down/up projections), dense MLPs,
  shared experts, the router, the LM head;
- routed experts: only the k experts a token uses (active, not total, parameters);
- attention scores and values: a token at position t attends to min(t + 1, window) keys; averaged
  over a row of length T that is (T + 1) / 2 for causal attention, each key costing
  2 * heads * (qk_head_dim + v_head_dim) FLOPs. `causal=False` counts all T keys (what a dense
  reference implementation computes).
"""

from __future__ import annotations

import jax

from jaxtrain.models.config import ModelConfig

# Dense (no sparsity) peak FLOP/s per chip by compute dtype; matched on jax's device_kind.
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},  # fp32 via TF32
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "H800": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "B200": {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "A800": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "L40S": {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v6 lite": {"bfloat16": 918e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of one device for `dtype`, or None when the device is not in the table."""
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # "H100" must not match "H1000"
    if name.lower() in device_kind.lower():
      return PEAK_FLOPS[name].get(dtype)
  return None


def _mean_keys(seq_len: int, window: int, causal: bool) -> float:
  if not causal:
    return float(seq_len if not window else min(window, seq_len))
  if not window or window >= seq_len:
    return (seq_len + 1) / 2
  # positions t < window see t + 1 keys, the rest see `window`
  return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _head_dims(cfg: ModelConfig) -> tuple[int, int]:
  """(query/key head dim, value head dim)."""
  if cfg.attention == "mla":
    return cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
  return cfg.resolved_head_dim, cfg.resolved_head_dim


def _attention_params(cfg: ModelConfig) -> int:
  E, H = cfg.hidden_size, cfg.num_heads
  if cfg.attention == "mla":
    dqk, dv = _head_dims(cfg)
    q = E * cfg.q_lora_rank + cfg.q_lora_rank * H * dqk if cfg.q_lora_rank else E * H * dqk
    kv = E * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + dv)
    return q + kv + H * dv * E
  D = cfg.resolved_head_dim
  return E * (H + 2 * cfg.num_kv_heads) * D + H * D * E


def matmul_params_per_token(cfg: ModelConfig) -> dict[str, int]:
  """Multiply-adds per token of every matmul, grouped by where they happen."""
  E = cfg.hidden_size
  attention = _attention_params(cfg)
  dense_mlp = 3 * E * cfg.intermediate_size
  moe = (E * cfg.num_experts + cfg.num_experts_per_tok * 3 * E * cfg.moe_intermediate_size
         + 3 * E * cfg.shared_expert_intermediate_size + (E if cfg.shared_expert_gate else 0))
  layers = [attention + (moe if cfg.is_moe_layer(i) else dense_mlp) for i in range(cfg.num_layers)]
  return {"layers": sum(layers), "lm_head": E * cfg.vocab_size}


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
  per_key = 2 * cfg.num_heads * sum(_head_dims(cfg))
  return sum(per_key * _mean_keys(seq_len, cfg.layer_window(i), causal) for i in range(cfg.num_layers))


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
  matmuls = matmul_params_per_token(cfg)
  return 2.0 * (matmuls["layers"] + matmuls["lm_head"]) + attention_flops_per_token(cfg, seq_len, causal=causal)


def train_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> float:
  return 3.0 * forward_flops_per_token(cfg, seq_len, causal=causal)


def mfu(flops_per_token: float, tokens_per_sec: float, num_devices: int, peak: float | None) -> float | None:
  if not peak:
    return None
  return flops_per_token * tokens_per_sec / (peak * num_devices)


def device_peak(dtype: str) -> float | None:
  return peak_flops(jax.devices()[0].device_kind, dtype)
