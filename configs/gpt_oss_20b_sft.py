"""Supervised fine-tuning of gpt-oss-20b (24 layers alternating 128-token sliding-window and full
attention with sinks, 32 experts, top-4, 21B parameters, 3.6B active) from its Hugging Face
release; the MXFP4 expert weights are dequantized to the training dtype while importing.

    python -m jaxtrain.main --config configs/gpt_oss_20b_sft.py \\
        --config.model.init_from=/data/gpt-oss-20b --config.data.tokenizer=/data/gpt-oss-20b \\
        --config.data.sources.sft.path=/data/sft.jsonl

Mesh: 8 GPUs of 80 GB (one host), fsdp=8 (ZeRO-3). fp32 masters + Adam + gradients = 16 bytes
per parameter: 39 GiB per device, plus activations with remat "full" for micro-batches of
1 x 4096 tokens per device (~10 GiB estimated; the 201k-vocabulary loss is chunked over
loss_vocab_chunk columns). Expert parallelism on one host (expert=8, fsdp=1) replicates the 1.8B
non-expert parameters (mostly the two 201k x 2880 embeddings) over the expert axis: 62 GiB of
state per device, too tight; from 16 GPUs up, expert=8 x fsdp=2 needs 31 GiB.
The architecture fields are gpt-oss-20b's config.json; with model.init_from set they are checked
against the checkpoint (any difference is an error naming the field).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/gpt_oss_20b_sft"
  c.model.update(
      arch="gpt_oss", vocab_size=201088, hidden_size=2880, num_layers=24, num_heads=64, num_kv_heads=8, head_dim=64,
      qk_norm=False, attention_bias=True, attention_out_bias=True, attention_sinks=True, sliding_window=128,
      layer_types=("sliding_attention", "full_attention") * 12, rope_theta=150000.0, max_position_embeddings=131072,
      rms_norm_eps=1e-5, intermediate_size=2880, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=2880,
      router="topk_softmax", expert_bias=True, expert_activation="clamped_swiglu", swiglu_alpha=1.702,
      swiglu_limit=7.0, tie_word_embeddings=False, aux_loss_weight=0.0,
      dtype="bfloat16", param_dtype="float32", remat="full")
  c.model.rope_scaling.update(type="yarn", factor=32.0, original_max_position_embeddings=4096, beta_fast=32.0,
                              beta_slow=1.0, truncate=False, mscale=0.0)
  c.model.init_from = "checkpoints/gpt-oss-20b"  # the Hugging Face directory (override)
  c.mesh.update(data=1, fsdp=-1, expert=1, sequence=1, tensor=1)
  c.data.update(seq_len=4096, tokenizer="checkpoints/gpt-oss-20b", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=32, micro_batches=4, lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10, loss_vocab_chunk=8192)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
