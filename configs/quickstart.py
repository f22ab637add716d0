"""Quickstart: a small Qwen3-MoE-style model (8 experts, top-2, 4 layers) trained byte-level
on the Python standard library's own source files (present on every machine, no download).

    python -m jaxtrain.main --config configs/quickstart.py

Finishes in a few minutes on 2 CPU cores and prints the held-out loss next to a unigram
model's, then a short generated sample.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/quickstart"
  c.model.update(
      arch="qwen3_moe", vocab_size=272, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
      intermediate_size=512, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
      rope_theta=10000.0, aux_loss_weight=0.01)
  c.data.seq_len = 256
  c.data.tokenizer = "byte"
  c.train.update(steps=300, global_batch=8, lr=2e-3, warmup_steps=30, weight_decay=0.1, log_every=10)
  c.eval.update(batches=8, unigram_baseline=True)
  c.checkpoint.every = 100
  c.sample.update(prompt="def ", max_new_tokens=80, temperature=0.7)
  return c
