"""GRPO quick check on CPU: a small Qwen3-MoE-style model, randomly initialised, learns from
rewards alone to answer sums of digits ("3+4=" -> "7", the 55 sums up to 9) byte-level. The
data comes with the repo (configs/data/arithmetic.jsonl, written by
configs/data/make_arithmetic.py).

    python -m jaxtrain.main --config configs/grpo_tiny.py

Rewards: the completion starts with the right number (weight 1,
configs/data/arithmetic_rewards.py: a user function loaded by path) and it starts with a digit
at all (weight 0.2, the built-in regex_match). The mean reward climbs from ~0.02 to ~0.6 in a
few minutes (the right answer from chance, 0.1, to ~0.4); metrics.jsonl has the curve,
completions.jsonl samples of what the model wrote.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/grpo_tiny"
  c.model.update(
      arch="qwen3_moe", vocab_size=272, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      intermediate_size=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, rope_theta=10000.0)
  c.data.tokenizer = "byte"
  c.data.sources = {"arithmetic": {"kind": "jsonl", "path": "configs/data/arithmetic.jsonl", "format": "prompt",
                                   "holdout": "none"}}
  c.train.update(method="grpo", steps=300, lr=2e-3, schedule="constant", warmup_steps=5, weight_decay=0.0,
                 log_every=10)
  c.grpo.update(
      num_generations=16, prompts_per_step=8, max_prompt_tokens=8, max_new_tokens=4, temperature=1.0,
      loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28, num_iterations=1, decode_chunk=4,
      rewards={"correct": {"function": "configs/data/arithmetic_rewards.py:answer_first", "weight": 1.0},
               "starts_with_digit": {"function": "regex_match", "pattern": r"^\d", "weight": 0.2}})
  c.checkpoint.every = 100
  c.sample.enabled = False
  return c
