"""Supervised fine-tuning of Kimi-K2 (1.04T parameters, 32B active: the DeepSeek-V3 architecture
with 64 heads, one dense then 60 MoE layers of 384 routed experts, top-8, one shared expert)
from its Hugging Face release (FP8 weights dequantized while importing). Mesh, remat and
micro-batches are "auto" (`python -m jaxtrain.plan`; RESULTS.md has the plan for 256 H800s).

    python -m jaxtrain.main --config configs/kimi_k2_sft.py \\
        --config.model.init_from=/data/Kimi-K2-Instruct --config.data.tokenizer=/data/Kimi-K2-Instruct \\
        --config.data.sources.sft.path=/data/sft.jsonl
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/kimi_k2_sft"
  c.model.update(
      arch="deepseek_v3", vocab_size=163840, hidden_size=7168, num_layers=61, num_heads=64, num_kv_heads=64,
      head_dim=192, qk_norm=False, attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
      qk_rope_head_dim=64, v_head_dim=128, rope_interleave=True, rope_theta=50000.0, max_position_embeddings=131072,
      rms_norm_eps=1e-6, intermediate_size=18432, first_k_dense=1, num_experts=384, num_experts_per_tok=8,
      moe_intermediate_size=2048, shared_expert_intermediate_size=2048, router="sigmoid_group", n_group=1,
      topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.827, tie_word_embeddings=False,
      router_bias_update_rate=0.001, aux_loss_weight=0.0, seq_aux_loss_weight=1e-4,
      dtype="bfloat16", param_dtype="float32", remat="auto")
  c.model.rope_scaling.update(type="yarn", factor=32.0, original_max_position_embeddings=4096, beta_fast=1.0,
                              beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
  c.model.init_from = "checkpoints/Kimi-K2-Instruct"  # the Hugging Face directory (override)
  c.mesh.update(data="auto", fsdp="auto", expert="auto", sequence="auto", tensor="auto")
  c.data.update(seq_len=4096, tokenizer="checkpoints/Kimi-K2-Instruct", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=512, micro_batches="auto", lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=1)
  c.checkpoint.update(every=100, keep=2)
  c.eval.update(every=0, batches=2)
  c.sample.enabled = False
  return c
