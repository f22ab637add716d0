"""The `train`, `eval`, `checkpoint` and `sample` config sections."""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxtrain.config import require

SCHEDULES = ("cosine", "linear", "constant")
METHODS = ("sft", "grpo")


def defaults() -> ConfigDict:
  return ConfigDict({
      "method": "sft",  # sft (next-token loss on data) | grpo (RL from rewards: the grpo section)
      "steps": 1000,  # optimizer steps
      "global_batch": 8,  # sequences per optimizer step, over all devices and micro-batches
      "micro_batches": 1,  # gradient accumulation: global_batch is split into this many
      "lr": 3e-4,
      "schedule": "cosine",
      "warmup_steps": 100,
      "min_lr_ratio": 0.1,  # final lr = lr * min_lr_ratio (cosine, linear)
      "weight_decay": 0.1,  # never applied to norms, biases or embeddings' norms
      "b1": 0.9,
      "b2": 0.95,
      "eps": 1e-8,
      "clip_norm": 1.0,  # global-norm clipping; 0 disables
      "loss_vocab_chunk": 8192,  # vocab columns per cross-entropy chunk (bounds the [tokens, vocab] logits)
      "log_every": 10,
      "progress": True,  # progress bar on the terminal
      "max_compile_seconds_warning": 600.0,
  })


def eval_defaults() -> ConfigDict:
  return ConfigDict({
      "every": 0,  # 0 = only at the end
      "batches": 4,
      "unigram_baseline": False,  # also report a unigram model's held-out loss (text data)
  })


def checkpoint_defaults() -> ConfigDict:
  return ConfigDict({
      "every": 0,  # steps between saves; 0 = only the final checkpoint
      "keep": 3,  # most recent checkpoints kept
      "keep_every": 0,  # also keep every Nth step forever (0 = off)
      "async_save": True,
      "enabled": True,
  })


def sample_defaults() -> ConfigDict:
  return ConfigDict({
      "prompt": "def ",
      "max_new_tokens": 64,
      "temperature": 0.8,
      "top_k": 0,
      "enabled": True,
  })


def validate(config: ConfigDict) -> None:
  t = config.train
  require(t.method in METHODS, "train.method", f"{t.method!r} is not one of {METHODS}")
  require(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}")
  require(t.global_batch >= 1, "train.global_batch", f"must be >= 1, got {t.global_batch}")
  require(t.micro_batches >= 1 and t.global_batch % t.micro_batches == 0, "train.micro_batches",
          f"micro_batches={t.micro_batches} must divide global_batch={t.global_batch}")
  require(t.schedule in SCHEDULES, "train.schedule", f"{t.schedule!r} is not one of {SCHEDULES}")
  require(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
  require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
  require(t.loss_vocab_chunk >= 1, "train.loss_vocab_chunk", "must be >= 1")
  require(t.log_every >= 1, "train.log_every", "must be >= 1")
  require(config.checkpoint.every >= 0, "checkpoint.every", "must be >= 0")
  require(config.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
