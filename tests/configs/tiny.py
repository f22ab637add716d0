"""A tiny MoE run for end-to-end tests: seconds per step on one CPU core."""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.model.update(vocab_size=272, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 intermediate_size=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
  c.data.seq_len = 64
  c.train.update(steps=12, global_batch=4, lr=1e-3, warmup_steps=2, log_every=1, progress=False)
  c.eval.batches = 1
  c.checkpoint.every = 4
  c.sample.enabled = False
  return c
