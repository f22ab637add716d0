"""InternVL / Intern-S1's architecture at toy sizes, for CPU runs: the cls_vit tower (InternViT:
32-pixel tiles of 8x8 patches, class token, learned positions, layer-scaled pre-norm blocks
with q/k RMSNorm), pixel shuffle 2x2 and the MLP projector (4 tokens per tile), on a Qwen3-MoE
language model (8 experts, top-2).

    python -m jaxtrain.main --config configs/internvl_tiny.py

Data: byte-level text until the multimodal pipeline is merged (see configs/qwen3_vl_tiny.py);
image batches then follow `jaxtrain/train/vision_batch.py`, with up to 8 tiles per row.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/internvl_tiny"
  c.model.update(
      arch="internvl", vocab_size=272, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, qk_norm=True, rope_theta=1_000_000.0, max_position_embeddings=1024, num_experts=8,
      num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, router="softmax_topk",
      aux_loss_weight=0.001)
  c.model.vision.update(
      tower="cls_vit", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, activation="gelu",
      norm="layer_norm", norm_eps=1e-6, patch_size=8, image_size=32, spatial_merge_size=2, qkv_bias=False,
      qk_norm=True, projector_activation="gelu", image_token_id=270, row_capacity=8)
  c.data.seq_len = 128
  c.data.tokenizer = "byte"
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
