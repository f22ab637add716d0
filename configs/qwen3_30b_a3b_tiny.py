"""configs/qwen3_30b_a3b_sft.py's architecture (Qwen3-MoE: q/k norm, GQA, all layers MoE with
softmax top-k routing and renormalised weights) at toy sizes, byte-level on the Python standard
library, for CPU runs and tests.

    python -m jaxtrain.main --config configs/qwen3_30b_a3b_tiny.py
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_30b_a3b_tiny"
  c.model.update(
      arch="qwen3_moe", vocab_size=272, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, qk_norm=True, rope_theta=1_000_000.0, max_position_embeddings=1024, num_experts=16,
      num_experts_per_tok=4, moe_intermediate_size=32, norm_topk_prob=True, router="softmax_topk",
      aux_loss_weight=0.001)
  c.data.seq_len = 64
  c.data.tokenizer = "byte"
  c.train.update(steps=40, global_batch=8, lr=2e-3, warmup_steps=4, log_every=4)
  c.eval.batches = 2
  c.checkpoint.every = 20
  return c
