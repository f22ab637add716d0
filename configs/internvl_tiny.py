"""InternVL / Intern-S1's architecture at toy sizes, for CPU runs: the cls_vit tower (InternViT:
448-pixel tiles of 14-pixel patches, class token, learned positions, layer-scaled pre-norm
blocks with q/k RMSNorm), pixel shuffle 2x2 and the MLP projector (256 tokens per tile, as
InternVL3.5), on a Qwen3-MoE language model (8 experts, top-2).

    python -m jaxtrain.main --config configs/internvl_tiny.py      # or: jaxtrain train --config ...

Data: the synthetic set of configs/qwen3_vl_tiny.py through the InternVL processor directory
it writes (one 448-pixel tile per picture; videos as 2 frames, each a tile).
"""

from jaxtrain import defaults
from jaxtrain.data.vision import synthetic

DATA = "runs/vlm_synth"


def get_config(data: str = DATA, train: int = 2000, heldout: int = 256):
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location("qwen3_vl_tiny", os.path.join(os.path.dirname(__file__),
                                                                              "qwen3_vl_tiny.py"))
  qwen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(qwen)
  paths = synthetic.ensure(data, train=train, heldout=heldout, seed=0, size=64, video_frames=8, video_fps=4,
                           video_share=0.2)
  tokenizer = paths["processor/internvl"]
  (image,) = qwen.special_ids(tokenizer, "<IMG_CONTEXT>")
  c = defaults()
  c.workdir = "runs/internvl_tiny"
  c.model.update(
      arch="internvl", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, qk_norm=True, rope_theta=1_000_000.0, max_position_embeddings=1024, num_experts=8,
      num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, router="softmax_topk",
      aux_loss_weight=0.001)
  c.model.vision.update(
      tower="cls_vit", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, activation="gelu",
      norm="layer_norm", norm_eps=1e-6, patch_size=14, image_size=448, spatial_merge_size=2, qkv_bias=False,
      qk_norm=True, projector_activation="gelu", image_token_id=image, row_capacity=2)
  c.data.seq_len = 640
  c.data.tokenizer = tokenizer
  c.data.vision.update(max_patches=2, max_items=2, video_num_frames=2)  # tiles per row = row_capacity
  c.data.sources = {
      "train": {"kind": "jsonl", "path": paths["vision_chat/train"], "format": "vision_chat", "holdout": "none"},
      "heldout": {"kind": "jsonl", "path": paths["vision_chat/heldout"], "format": "vision_chat", "holdout": "all"},
  }
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
