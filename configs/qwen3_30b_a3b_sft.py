"""Supervised fine-tuning of Qwen3-30B-A3B (48 layers, 128 experts, top-8, 30.5B parameters,
3.3B active) from its Hugging Face checkpoint.

    python -m jaxtrain.main --config configs/qwen3_30b_a3b_sft.py \\
        --config.model.init_from=/data/Qwen3-30B-A3B --config.data.tokenizer=/data/Qwen3-30B-A3B \\
        --config.data.sources.sft.path=/data/sft.jsonl

Mesh: 16 GPUs of 80 GB (two 8-GPU hosts), expert=8 x fsdp=2. Expert weights split over all 16
devices (experts over `expert`, their hidden dim over `fsdp`); the 1.5B non-expert parameters
over fsdp=2. fp32 masters + Adam moments + gradients = 16 bytes per parameter: 38.5 GiB per
device (11.5 GiB dense part + 27 GiB experts), plus activations with remat "full" (bf16
compute) for micro-batches of 2 x 4096 tokens per device: ~19 GiB estimated; ~58 GiB in all.
Pure fsdp=16 needs less (28 GiB + 12 GiB) but gathers every expert weight at every layer; on
one 8-GPU host (expert=8, fsdp=1) the state alone is 77 GiB per device: does not fit.
(`python -m jaxtrain.main` prints its own per-device memory estimate at start-up.)
The architecture fields are Qwen3-30B-A3B's config.json; with model.init_from set they are
checked against the checkpoint (any difference is an error naming the field).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_30b_a3b_sft"
  c.model.update(
      arch="qwen3_moe", vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4,
      head_dim=128, intermediate_size=6144, qk_norm=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
      max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
      norm_topk_prob=True, router="softmax_topk", tie_word_embeddings=False,
      dtype="bfloat16", param_dtype="float32", remat="full", aux_loss_weight=0.001)
  c.mesh.update(data=1, fsdp=-1, expert=8, sequence=1, tensor=1)
  c.model.init_from = "checkpoints/Qwen3-30B-A3B"  # the Hugging Face directory (override)
  c.data.update(seq_len=4096, tokenizer="checkpoints/Qwen3-30B-A3B", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=64, micro_batches=2, lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
