"""Long-context training of Qwen3-235B-A22B (94 layers, 128 experts, top-8, 235B parameters, 22B
active) on 64k-token rows from its Hugging Face checkpoint, with no hand-tuned parallelism:
the mesh, remat policy and micro-batch split are "auto" (the planner, `python -m jaxtrain.plan`,
picks them for the devices the run gets and logs the predicted memory).

    python -m jaxtrain.main --config configs/qwen3_235b_a22b_64k.py \\
        --config.model.init_from=/data/Qwen3-235B-A22B --config.data.tokenizer=/data/Qwen3-235B-A22B \\
        --config.data.sources.sft.path=/data/long.jsonl
    python -m jaxtrain.plan --config configs/qwen3_235b_a22b_64k.py --device-kind H800 --devices 256

256 rows of 65,536 tokens per step (16.8M tokens): one row per device on 256 GPUs, split into
micro-batches on fewer. experiments/RESULTS.md has the plans for 64 and 256 H800s.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_235b_a22b_64k"
  c.model.update(
      arch="qwen3_moe", vocab_size=151936, hidden_size=4096, num_layers=94, num_heads=64, num_kv_heads=4,
      head_dim=128, intermediate_size=12288, qk_norm=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
      max_position_embeddings=65536, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536,
      norm_topk_prob=True, router="softmax_topk", tie_word_embeddings=False, aux_loss_weight=0.001,
      dtype="bfloat16", param_dtype="float32", remat="auto")
  c.model.init_from = "checkpoints/Qwen3-235B-A22B"  # the Hugging Face directory (override)
  c.mesh.update(data="auto", fsdp="auto", expert="auto", sequence="auto", tensor="auto")
  c.data.update(seq_len=65536, tokenizer="checkpoints/Qwen3-235B-A22B", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/long.jsonl", "format": "chat"}}
  c.train.update(steps=1000, global_batch=256, micro_batches="auto", lr=1e-5, warmup_steps=20, weight_decay=0.0,
                 log_every=1, loss_vocab_chunk=8192)
  c.checkpoint.update(every=100, keep=2)
  c.eval.update(every=0, batches=2)
  c.sample.enabled = False
  return c
