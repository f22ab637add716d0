"""A task-specific reward for configs/grpo_tiny.py, loaded by path
(`grpo.rewards.digits.function = "configs/data/arithmetic_rewards.py:digits"`): partial credit
that guides a freshly initialised model towards answers made of digits."""


def digits(prompts, completions, **columns):
  """The share of the completion's characters that are digits (0 for an empty completion)."""
  return [sum(ch.isdigit() for ch in c) / len(c) if c else 0.0 for c in completions]
