"""Supervised fine-tuning of an InternVL3.5-8B / Intern-S1-mini-sized model (InternViT-300M:
24 blocks of width 1024 on 448-pixel tiles, pixel shuffle 2x2 -> 256 tokens per tile, MLP
projector; Qwen3-8B language model: 36 layers, GQA 32/8; 8.5B parameters) from a Hugging Face
`internvl` directory (e.g. OpenGVLab/InternVL3_5-8B-HF), on image chat data.

    python -m jaxtrain.main --config configs/internvl3_5_8b_sft.py \\
        --config.model.init_from=/data/InternVL3_5-8B-HF --config.data.tokenizer=/data/InternVL3_5-8B-HF \\
        --config.data.sources.sft.path=/data/vl_sft.jsonl

Mesh: one host of 8 GPUs of 80 GB, fsdp=8 (ZeRO-3). Rows of 8192 tokens hold up to 12 tiles
(e.g. two images of 6 tiles with their thumbnails: 3072 image tokens). Memory per device
(experiments/memory_report.py, see experiments/RESULTS.md): parameters 4.0 GiB, optimizer state
7.9 GiB, activations ~5.2 GiB (bf16, remat full, 1 row per micro-batch; 1.1 GiB of it the
vision tower's 12 tiles): ~17 GiB, plus gradients and XLA temporaries.
The architecture fields are the checkpoint's config.json; with model.init_from set they are
checked against it (any difference is an error naming the field).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/internvl3_5_8b_sft"
  c.model.update(
      arch="internvl", vocab_size=151936, hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8,
      head_dim=128, intermediate_size=12288, qk_norm=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
      max_position_embeddings=40960, num_experts=0, tie_word_embeddings=False,
      dtype="bfloat16", param_dtype="float32", remat="full")
  c.model.vision.update(
      tower="cls_vit", hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, activation="gelu",
      norm="layer_norm", norm_eps=1e-6, patch_size=14, image_size=448, spatial_merge_size=2, qkv_bias=True,
      qk_norm=False, final_norm=False, projector_activation="gelu", image_token_id=151671, row_capacity=12,
      remat="full")
  c.mesh.update(data=1, fsdp=-1, expert=1, sequence=1, tensor=1)
  c.model.init_from = "checkpoints/InternVL3_5-8B-HF"  # the Hugging Face directory (override)
  c.data.update(seq_len=8192, tokenizer="checkpoints/InternVL3_5-8B-HF", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/vl_sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=16, micro_batches=2, lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
