"""A tiny DeepSeek-V3-architecture model that trains on CPU in seconds: multi-head latent
attention (q LoRA, kv LoRA, decoupled interleaved RoPE with yarn and its attention-scale
correction), one dense layer then MoE layers with sigmoid group-limited routing, shared experts,
aux-loss-free balancing (score-correction bias updated every step) and the sequence-wise
balance loss. Byte-level, on the Python standard library's source (no download).

    python -m jaxtrain.main --config configs/deepseek_v3_tiny.py
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m jaxtrain.main \\
        --config configs/deepseek_v3_tiny.py --config.mesh.fsdp=1 --config.mesh.expert=8

The architecture is that of configs/moonlight_16b_a3b_sft.py (and DeepSeek-V3 / Kimi-K2) at
toy sizes; the rope is yarn as in DeepSeek-V3.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/deepseek_v3_tiny"
  c.model.update(
      arch="deepseek_v3", vocab_size=272, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=16,
      qk_norm=False, attention="mla", q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
      v_head_dim=8, rope_interleave=True, rope_theta=10000.0, max_position_embeddings=256,
      intermediate_size=128, first_k_dense=1, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
      shared_expert_intermediate_size=32, router="sigmoid_group", n_group=4, topk_group=2, norm_topk_prob=True,
      routed_scaling_factor=2.5, router_bias_update_rate=0.001, aux_loss_weight=0.0, seq_aux_loss_weight=1e-4)
  c.model.rope_scaling.update(type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32.0,
                              beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
  c.data.seq_len = 64
  c.data.tokenizer = "byte"
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
