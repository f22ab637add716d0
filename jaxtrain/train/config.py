"""The `train`, `eval`, `checkpoint`, `sample` and `logging` config sections."""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxtrain.config import is_auto, require
from jaxtrain.posttrain.methods import METHODS

SCHEDULES = ("cosine", "linear", "constant")


def defaults() -> ConfigDict:
  return ConfigDict({
      # What the run optimises (jaxtrain/posttrain/methods.py): sft = next-token cross-entropy;
      # dpo = a pairwise preference loss (the `preference` section) on {prompt, chosen, rejected};
      # grpo = RL from rewards on sampled completions (the `grpo` section).
      "method": "sft",
      "steps": 1000,  # optimizer steps of the run (a resumed run continues up to it)
      "global_batch": 8,  # sequences per optimizer step, over all devices and micro-batches
      "micro_batches": 1,  # gradient accumulation: global_batch is split into this many ("auto": the planner)
      "lr": 3e-4,  # peak learning rate (after warmup)
      "schedule": "cosine",  # learning-rate decay after warmup: cosine | linear | constant
      "warmup_steps": 100,  # linear warmup from 0 to lr
      "min_lr_ratio": 0.1,  # final lr = lr * min_lr_ratio (cosine, linear)
      "weight_decay": 0.1,  # never applied to norms, biases or embeddings' norms
      "b1": 0.9,  # AdamW beta1
      "b2": 0.95,  # AdamW beta2
      "eps": 1e-8,  # AdamW epsilon
      "clip_norm": 1.0,  # global-norm clipping; 0 disables
      "loss_vocab_chunk": 8192,  # vocab columns per cross-entropy chunk (bounds the [tokens, vocab] logits)
      "check_memory": True,  # refuse, before compiling, a config predicted not to fit (accelerators; CPU given device_memory_gib)
      "device_memory_gib": 0.0,  # memory per device the planner plans with (0 = what the device has)
      "log_every": 10,  # steps between metrics records (metrics.jsonl, TensorBoard)
      "progress": True,  # progress bar on the terminal
      "max_compile_seconds_warning": 600.0,  # warn when compiling the train step takes longer
      # (first, last): trace steps first..last with jax.profiler into workdir/tensorboard
      # (TensorBoard's profile tab, or Perfetto: perfetto_trace.json.gz); () = no trace.
      "profile_steps": (),
  }, type_safe=False)  # micro_batches may be "auto"


def eval_defaults() -> ConfigDict:
  return ConfigDict({
      "every": 0,  # 0 = only at the end
      "batches": 4,  # held-out batches per evaluation
      "unigram_baseline": False,  # also report a unigram model's held-out loss (text data)
  })


def checkpoint_defaults() -> ConfigDict:
  return ConfigDict({
      "every": 0,  # steps between saves; 0 = only the final checkpoint
      "keep": 3,  # most recent checkpoints kept
      "keep_every": 0,  # also keep every Nth step forever (0 = off)
      "async_save": True,  # write checkpoints in the background while training goes on
      "enabled": True,  # save checkpoints (periodic and final)
  })


def sample_defaults() -> ConfigDict:
  return ConfigDict({
      "prompt": "def ",  # prompt of the sample printed at the end of a run
      "max_new_tokens": 64,  # length of that sample
      "temperature": 0.8,  # sampling temperature (0 = greedy)
      "top_k": 0,  # sample among the k most likely tokens (0 = all)
      "enabled": True,  # print a sample at the end of a run
  })


def logging_defaults() -> ConfigDict:
  return ConfigDict({
      "tensorboard": True,  # also write every metrics.jsonl value as TensorBoard events in workdir/tensorboard
      "wandb": {
          "enabled": False,  # also log to Weights & Biases (pip install 'jaxtrain[wandb]')
          "project": "jaxtrain",  # W&B project
          "entity": "",  # W&B team or user; "" = your default entity
          "name": "",  # run name; "" = the workdir's name
          "mode": "online",  # online | offline (files in workdir/wandb; `wandb sync` later) | disabled
          "tags": (),  # run tags
      },
  })


WANDB_MODES = ("online", "offline", "disabled")


def validate(config: ConfigDict) -> None:
  t = config.train
  require(t.method in METHODS, "train.method", f"{t.method!r} is not one of {METHODS}")
  # Preference pairs and RL prompts carry text only: their rows have no pictures to lay out.
  require(t.method == "sft" or config.model.vision.tower == "none", "train.method",
          f"train.method={t.method!r} is not supported for a vision-language model (model.vision.tower="
          f"{config.model.vision.tower!r}): preference pairs and RL prompts carry no images; use train.method='sft'")
  require(t.steps >= 0, "train.steps", f"must be >= 0, got {t.steps}")
  require(t.global_batch >= 1, "train.global_batch", f"must be >= 1, got {t.global_batch}")
  require(is_auto(t.micro_batches) or (isinstance(t.micro_batches, int) and t.micro_batches >= 1
                                       and t.global_batch % t.micro_batches == 0), "train.micro_batches",
          f"micro_batches={t.micro_batches!r} must divide global_batch={t.global_batch} (or be 'auto')")
  require(t.schedule in SCHEDULES, "train.schedule", f"{t.schedule!r} is not one of {SCHEDULES}")
  require(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
  require(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
  require(t.loss_vocab_chunk >= 1, "train.loss_vocab_chunk", "must be >= 1")
  require(t.device_memory_gib >= 0, "train.device_memory_gib", f"must be >= 0, got {t.device_memory_gib}")
  require(t.log_every >= 1, "train.log_every", "must be >= 1")
  require(config.checkpoint.every >= 0, "checkpoint.every", "must be >= 0")
  require(config.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
  p = tuple(t.profile_steps)
  require(p == () or (len(p) == 2 and 1 <= p[0] <= p[1]), "train.profile_steps",
          f"must be () or (first, last) with 1 <= first <= last, got {p}")
  require(config.logging.wandb.mode in WANDB_MODES, "logging.wandb.mode",
          f"{config.logging.wandb.mode!r} is not one of {WANDB_MODES}")
