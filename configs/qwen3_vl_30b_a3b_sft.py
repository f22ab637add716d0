"""Supervised fine-tuning of Qwen3-VL-30B-A3B (language model: 48 layers, 128 experts, top-8;
vision tower: 27 blocks of width 1152, DeepStack from blocks 8 / 16 / 24; 31.1B parameters)
from its Hugging Face checkpoint, on image / video chat data.

    python -m jaxtrain.main --config configs/qwen3_vl_30b_a3b_sft.py \\
        --config.model.init_from=/data/Qwen3-VL-30B-A3B-Instruct \\
        --config.data.tokenizer=/data/Qwen3-VL-30B-A3B-Instruct --config.data.sources.sft.path=/data/vl_sft.jsonl

Mesh: 16 GPUs of 80 GB (two 8-GPU hosts), expert=8 x fsdp=2, as configs/qwen3_30b_a3b_sft.py.
Rows of 8192 tokens hold up to 16384 patches (4096 image tokens: e.g. four 1024 x 1024
images); the vision tower is small (0.6B) and compute-heavy, so it keeps its own remat policy
("full") and shards over fsdp only. Memory per device (experiments/memory_report.py, see
experiments/RESULTS.md): parameters 10.6 GiB (experts over all 16 devices, the rest over
fsdp=2), optimizer state 21.2 GiB (fp32 Adam moments), activations ~13.3 GiB (bf16, remat full,
1 row of 8192 tokens per micro-batch; 2.0 GiB of it the vision tower's 16384 patch slots):
~45 GiB, leaving room for gradients and XLA temporaries. `--config.model.freeze="('vision',)"`
trains the projector and language model only (no vision-tower backward pass or optimizer state).
The architecture fields are the checkpoint's config.json; with model.init_from set they are
checked against it (any difference is an error naming the field).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_vl_30b_a3b_sft"
  c.model.update(
      arch="qwen3_vl_moe", vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4,
      head_dim=128, intermediate_size=6144, qk_norm=True, rms_norm_eps=1e-6, rope_theta=5_000_000.0,
      mrope_section=(24, 20, 20), max_position_embeddings=262144, num_experts=128, num_experts_per_tok=8,
      moe_intermediate_size=768, norm_topk_prob=True, router="softmax_topk", tie_word_embeddings=False,
      dtype="bfloat16", param_dtype="float32", remat="full", aux_loss_weight=0.001)
  c.model.vision.update(
      tower="rope_vit", hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304,
      activation="gelu_tanh", patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
      num_position_embeddings=2304, deepstack_layers=(8, 16, 24), image_token_id=151655, video_token_id=151656,
      row_capacity=16384, remat="full")
  c.mesh.update(data=1, fsdp=-1, expert=8, sequence=1, tensor=1)
  c.model.init_from = "checkpoints/Qwen3-VL-30B-A3B-Instruct"  # the Hugging Face directory (override)
  c.data.update(seq_len=8192, tokenizer="checkpoints/Qwen3-VL-30B-A3B-Instruct", loss_on="assistant",
                overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/vl_sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=32, micro_batches=2, lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
