"""The `grpo` config section (GRPO-family RL, `train.method=grpo`), owned by posttrain/.

Like every section module it imports only the config machinery, so `train/run_config.py` can
assemble it. `grpo.rewards` is an open map: each entry is a user-named reward validated
against `reward_defaults()`.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxtrain.config import require

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
PROMPT_KINDS = ("jsonl", "parquet", "arrow")


def reward_defaults() -> ConfigDict:
  return ConfigDict({
      # A built-in name (exact_match, regex_match, format, number_match) or "module:function" /
      # "path/to/file.py:function"; called fn(prompts, completions, completion_ids=..., **columns)
      # -> list of floats (None = not applicable to that completion).
      "function": "",
      "weight": 1.0,  # the total reward is the weighted sum over reward functions
      "pattern": "",  # passed as pattern= when set (regex_match, format)
      "column": "",  # passed as column= when set: the record field holding the reference answer
  })


OPEN_MAPS = {"grpo.rewards": reward_defaults}


def defaults() -> ConfigDict:
  return ConfigDict({
      "num_generations": 8,  # completions per prompt: the group whose rewards are normalised together
      "prompts_per_step": 4,  # prompts per rollout batch (rows = prompts_per_step * num_generations)
      "num_iterations": 1,  # policy updates per rollout batch; > 1 clips the ratio to the rollout policy
      "max_prompt_tokens": 128,  # longer prompts are an error naming the record
      "max_new_tokens": 64,  # completion budget; completions cut here count as truncated
      "temperature": 1.0,  # sampling temperature; the loss scores logits / temperature (as TRL)
      "top_p": 1.0,  # nucleus sampling: smallest set of tokens with this much probability (1 = all)
      "top_k": 0,  # sample among the k most likely tokens (0 = all)
      "stop": (),  # stop strings (the tokenizer's eos always stops)
      "rewards": {},
      # Advantages: reward minus its group mean, divided by the std of the group | of the
      # batch | not at all (Dr. GRPO).
      "scale_rewards": "group",
      # grpo: per-sequence token mean, then mean over sequences; bnpo / dapo: mean over all
      # tokens of the batch (token-level, DAPO); dr_grpo: sum / (rows * max_new_tokens).
      "loss_type": "grpo",
      "epsilon_low": 0.2,  # ratio clipped to [1 - epsilon_low, 1 + epsilon_high]
      "epsilon_high": 0.2,  # DAPO clip-higher: 0.28
      "beta": 0.0,  # weight of the k3 KL estimate to the reference (the initial policy); 0 = none
      "dynamic_sampling": False,  # DAPO: drop groups whose rewards are all equal, sample more
      "max_rollout_rounds": 4,  # rollouts per step at most while dynamic sampling fills the batch
      "overlong_buffer": 0,  # DAPO soft overlong penalty over the last N tokens of the budget (0 = off)
      "overlong_penalty": 1.0,  # ... reaching -overlong_penalty at max_new_tokens
      "mask_truncated": False,  # completions cut at max_new_tokens get no loss (DAPO overlong filtering)
      "decode_chunk": 16,  # tokens per compiled decoding chunk (stop checks between chunks)
      "log_completions": 2,  # completions written to <workdir>/completions.jsonl per logged step
  })


def validate(config: ConfigDict) -> None:
  if config.train.method != "grpo":
    for name, s in config.data.sources.items():
      require(s.format != "prompt", f"data.sources.{name}.format",
              f"format 'prompt' (RL prompts) needs train.method=grpo, not {config.train.method!r}")
    return
  g = config.grpo
  require(g.num_generations >= 2, "grpo.num_generations", f"a group needs >= 2 completions, got {g.num_generations}")
  for key in ("prompts_per_step", "num_iterations", "max_prompt_tokens", "max_new_tokens", "decode_chunk",
              "max_rollout_rounds"):
    require(g[key] >= 1, f"grpo.{key}", f"must be >= 1, got {g[key]}")
  require(g.loss_type in LOSS_TYPES, "grpo.loss_type", f"{g.loss_type!r} is not one of {LOSS_TYPES}")
  require(g.scale_rewards in SCALE_REWARDS, "grpo.scale_rewards", f"{g.scale_rewards!r} is not one of {SCALE_REWARDS}")
  require(g.temperature > 0, "grpo.temperature", f"must be > 0 (the policy is softmax(logits / temperature)), got {g.temperature}")
  require(0 < g.top_p <= 1, "grpo.top_p", f"must be in (0, 1], got {g.top_p}")
  require(g.top_k >= 0, "grpo.top_k", f"must be >= 0, got {g.top_k}")
  require(0 <= g.epsilon_low < 1 and g.epsilon_high >= 0, "grpo.epsilon_low",
          f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got {g.epsilon_low}, {g.epsilon_high}")
  require(g.beta >= 0, "grpo.beta", f"must be >= 0, got {g.beta}")
  require(0 <= g.overlong_buffer <= g.max_new_tokens, "grpo.overlong_buffer",
          f"must be in [0, max_new_tokens={g.max_new_tokens}], got {g.overlong_buffer}")
  require(len(g.rewards) > 0, "grpo.rewards", "needs at least one reward function (grpo.rewards.NAME.function)")
  for name, r in g.rewards.items():
    require(bool(r.function), f"grpo.rewards.{name}.function", "is empty: a built-in name or 'module:function'")
  rows = g.prompts_per_step * g.num_generations
  require(rows % config.train.micro_batches == 0, "train.micro_batches",
          f"must divide the rollout batch grpo.prompts_per_step * grpo.num_generations = {rows}")
  every = config.checkpoint.every
  require(every % g.num_iterations == 0, "checkpoint.every",
          f"must be a multiple of grpo.num_iterations={g.num_iterations} (checkpoints fall between rollouts)")
  for name, s in config.data.sources.items():
    key = f"data.sources.{name}"
    require(s.format == "prompt", f"{key}.format", f"train.method=grpo reads prompts: format must be 'prompt', "
            f"got {s.format!r}")
    require(s.kind in PROMPT_KINDS, f"{key}.kind", f"prompts come from records: kind must be one of {PROMPT_KINDS}")
