"""Supervised fine-tuning of gpt-oss-120b (36 layers alternating 128-token sliding-window and full
attention with sinks, 128 experts, top-4, 117B parameters, 5.1B active) from its Hugging Face
release (MXFP4 expert weights dequantized while importing). Mesh, remat and micro-batches are
"auto" (`python -m jaxtrain.plan`; RESULTS.md has the plan for 8 H100s).

    python -m jaxtrain.main --config configs/gpt_oss_120b_sft.py \\
        --config.model.init_from=/data/gpt-oss-120b --config.data.tokenizer=/data/gpt-oss-120b \\
        --config.data.sources.sft.path=/data/sft.jsonl
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/gpt_oss_120b_sft"
  c.model.update(
      arch="gpt_oss", vocab_size=201088, hidden_size=2880, num_layers=36, num_heads=64, num_kv_heads=8, head_dim=64,
      qk_norm=False, attention_bias=True, attention_out_bias=True, attention_sinks=True, sliding_window=128,
      layer_types=("sliding_attention", "full_attention") * 18, rope_theta=150000.0, max_position_embeddings=131072,
      rms_norm_eps=1e-5, intermediate_size=2880, num_experts=128, num_experts_per_tok=4, moe_intermediate_size=2880,
      router="topk_softmax", expert_bias=True, expert_activation="clamped_swiglu", swiglu_alpha=1.702,
      swiglu_limit=7.0, tie_word_embeddings=False, aux_loss_weight=0.0,
      dtype="bfloat16", param_dtype="float32", remat="auto")
  c.model.rope_scaling.update(type="yarn", factor=32.0, original_max_position_embeddings=4096, beta_fast=32.0,
                              beta_slow=1.0, truncate=False, mscale=0.0)
  c.model.init_from = "checkpoints/gpt-oss-120b"  # the Hugging Face directory (override)
  c.mesh.update(data="auto", fsdp="auto", expert="auto", sequence="auto", tensor="auto")
  c.data.update(seq_len=4096, tokenizer="checkpoints/gpt-oss-120b", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=64, micro_batches="auto", lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10, loss_vocab_chunk=8192)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
