"""A tiny GPT-OSS-architecture model that trains on CPU in seconds: alternating sliding-window
and full attention layers with biases and learned per-head sinks, yarn RoPE, a biased
top-k-then-softmax router and experts with biases and the clamped SwiGLU. Byte-level, on the
Python standard library's source (no download).

    python -m jaxtrain.main --config configs/gpt_oss_tiny.py
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jaxtrain.main \\
        --config configs/gpt_oss_tiny.py --config.mesh.fsdp=1 --config.mesh.expert=8

The architecture is that of configs/gpt_oss_20b_sft.py at toy sizes.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/gpt_oss_tiny"
  c.model.update(
      arch="gpt_oss", vocab_size=272, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
      qk_norm=False, attention_bias=True, attention_out_bias=True, attention_sinks=True, sliding_window=16,
      layer_types=("sliding_attention", "full_attention") * 2, rope_theta=150000.0, max_position_embeddings=1024,
      intermediate_size=32, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, router="topk_softmax",
      expert_bias=True, expert_activation="clamped_swiglu", swiglu_alpha=1.702, swiglu_limit=7.0,
      rms_norm_eps=1e-5, aux_loss_weight=0.001)
  c.model.rope_scaling.update(type="yarn", factor=32.0, original_max_position_embeddings=32, beta_fast=32.0,
                              beta_slow=1.0, truncate=False, mscale=0.0)
  c.data.seq_len = 64
  c.data.tokenizer = "byte"
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
