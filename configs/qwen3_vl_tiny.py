"""Qwen3-VL-MoE's architecture at toy sizes, for CPU runs: the rope_vit vision tower (3D
patches, learned positions resampled per image, 2D rotary attention within each image, 2x2
patch merger, DeepStack into the first two language-model layers), interleaved multimodal
rotary positions, and a Qwen3-MoE language model (8 experts, top-2).

    python -m jaxtrain.main --config configs/qwen3_vl_tiny.py

Data: byte-level text (the Python standard library) until the multimodal pipeline is merged;
the train step then takes image / video batches as `jaxtrain/train/vision_batch.py` describes
(the synthetic shapes / digits / moving-shapes data set, with a tokenizer directory whose
image and video placeholder ids go in model.vision.image_token_id / video_token_id).
Patches are 8x8 pixels x 2 frames; a row holds up to 256 patches (four 64x64 images).
experiments/vlm_learns.py trains this model on synthetic pictures through the same batch
contract and reports held-out answer accuracy next to blank images (experiments/RESULTS.md).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_vl_tiny"
  c.model.update(
      arch="qwen3_vl_moe", vocab_size=272, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, qk_norm=True, rope_theta=10000.0, mrope_section=(4, 2, 2), max_position_embeddings=1024,
      num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, router="softmax_topk",
      aux_loss_weight=0.001)
  c.model.vision.update(
      tower="rope_vit", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, activation="gelu_tanh",
      patch_size=8, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64, deepstack_layers=(0, 1),
      image_token_id=270, video_token_id=271, row_capacity=256)
  c.data.seq_len = 128
  c.data.tokenizer = "byte"
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
