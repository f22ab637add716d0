"""Supervised fine-tuning of DeepSeek-V3 (671B parameters, 37B active: 61 layers of multi-head
latent attention, 3 dense then 58 MoE layers of 256 routed experts, top-8 within 4 of 8 groups,
one shared expert) from its Hugging Face release (the FP8 block-quantized weights are
dequantized while importing). Mesh, remat and micro-batches are "auto": the planner picks
them for the devices the run gets (`python -m jaxtrain.plan`; RESULTS.md has the plan for 256
H800s).

    python -m jaxtrain.main --config configs/deepseek_v3_sft.py \\
        --config.model.init_from=/data/DeepSeek-V3 --config.data.tokenizer=/data/DeepSeek-V3 \\
        --config.data.sources.sft.path=/data/sft.jsonl
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/deepseek_v3_sft"
  c.model.update(
      arch="deepseek_v3", vocab_size=129280, hidden_size=7168, num_layers=61, num_heads=128, num_kv_heads=128,
      head_dim=192, qk_norm=False, attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
      qk_rope_head_dim=64, v_head_dim=128, rope_interleave=True, rope_theta=10000.0, max_position_embeddings=163840,
      rms_norm_eps=1e-6, intermediate_size=18432, first_k_dense=3, num_experts=256, num_experts_per_tok=8,
      moe_intermediate_size=2048, shared_expert_intermediate_size=2048, router="sigmoid_group", n_group=8,
      topk_group=4, norm_topk_prob=True, routed_scaling_factor=2.5, tie_word_embeddings=False,
      router_bias_update_rate=0.001, aux_loss_weight=0.0, seq_aux_loss_weight=1e-4,
      dtype="bfloat16", param_dtype="float32", remat="auto")
  c.model.rope_scaling.update(type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0,
                              beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
  c.model.init_from = "checkpoints/DeepSeek-V3"  # the Hugging Face directory (override)
  c.mesh.update(data="auto", fsdp="auto", expert="auto", sequence="auto", tensor="auto")
  c.data.update(seq_len=4096, tokenizer="checkpoints/DeepSeek-V3", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=512, micro_batches="auto", lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=1)
  c.checkpoint.update(every=100, keep=2)
  c.eval.update(every=0, batches=2)
  c.sample.enabled = False
  return c
