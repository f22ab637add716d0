"""Qwen3-VL-MoE's architecture at toy sizes, for CPU runs: the rope_vit vision tower (3D
patches, learned positions resampled per image, 2D rotary attention within each image, 2x2
patch merger, DeepStack into the first two language-model layers), interleaved multimodal
rotary positions, and a Qwen3-MoE language model (8 experts, top-2).

    python -m jaxtrain.main --config configs/qwen3_vl_tiny.py      # or: jaxtrain train --config ...

Data: the synthetic pictures-and-questions set of `jaxtrain.data.vision.synthetic` (shapes,
digits, moving shapes in mp4 videos), generated into `runs/vlm_synth` on first use, read as
vision_chat JSONL through the multimodal data pipeline with the Qwen3-VL processor directory it
writes (a BPE tokenizer trained on the dataset's text, Qwen3-VL's chat template and image /
video processor settings: 16-pixel patches, 2 frames per patch). Held-out questions are the
eval split. `--config.data.sources.train.path=runs/vlm_synth/blank/train.jsonl` trains on the
same questions over blank pictures (experiments/vlm_synthetic.py compares the two).
"""

import os

from jaxtrain import defaults
from jaxtrain.data.vision import synthetic

DATA = "runs/vlm_synth"


def special_ids(tokenizer_dir: str, *names: str) -> list[int]:
  """Ids of the tokenizer's special tokens (the placeholders the vision features replace)."""
  import json
  with open(os.path.join(tokenizer_dir, "tokenizer.json"), encoding="utf-8") as f:
    added = {t["content"]: t["id"] for t in json.load(f)["added_tokens"]}
  return [added[n] for n in names]


def get_config(data: str = DATA, train: int = 2000, heldout: int = 256):
  paths = synthetic.ensure(data, train=train, heldout=heldout, seed=0, size=64, video_frames=8, video_fps=4,
                           video_share=0.2)
  tokenizer = paths["processor/qwen3_vl"]
  image, video = special_ids(tokenizer, "<|image_pad|>", "<|video_pad|>")
  c = defaults()
  c.workdir = "runs/qwen3_vl_tiny"
  c.model.update(
      arch="qwen3_vl_moe", vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, qk_norm=True, rope_theta=10000.0, mrope_section=(4, 2, 2), max_position_embeddings=1024,
      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, router="softmax_topk",
      aux_loss_weight=0.001)
  c.model.vision.update(
      tower="rope_vit", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, activation="gelu_tanh",
      patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64, deepstack_layers=(0, 1),
      image_token_id=image, video_token_id=video, row_capacity=512)
  c.data.seq_len = 256
  c.data.tokenizer = tokenizer
  c.data.vision.max_patches = 512  # = model.vision.row_capacity: no padding beyond the pipeline's
  c.data.sources = {
      "train": {"kind": "jsonl", "path": paths["vision_chat/train"], "format": "vision_chat", "holdout": "none"},
      "heldout": {"kind": "jsonl", "path": paths["vision_chat/heldout"], "format": "vision_chat", "holdout": "all"},
  }
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
