"""The task reward of configs/grpo_tiny.py, loaded by path
(`grpo.rewards.correct.function = "configs/data/arithmetic_rewards.py:answer_first"`)."""


def answer_first(prompts, completions, answer, **columns):
  """1.0 when the completion starts with the record's answer (what follows is ignored, so a
  freshly initialised model need not learn to stop first), else 0.0."""
  return [float(c.lstrip().startswith(str(a))) for c, a in zip(completions, answer)]
