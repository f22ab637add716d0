"""Supervised fine-tuning on a small chat file (configs/data/sft_example.jsonl), byte tokenizer.

The conversations use system / user / assistant / tool messages and tool calls; the loss is on
assistant turns only (data.loss_on). Run: python -m jaxtrain.main --config configs/sft_example.py
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  return {
      "workdir": "runs/sft_example",
      "data": {
          "seq_len": 1024,
          "tokenizer": "byte",  # ChatML template built in; or a local HF tokenizer directory
          "sources": {
              "sft": {
                  "kind": "jsonl",
                  "path": os.path.join(HERE, "data", "sft_example.jsonl"),
                  "format": "chat",
              },
          },
          "eval_fraction": 0.1,
          "loss_on": "assistant",
          "overlong": "truncate",
      },
      "train": {
          "steps": 100,
          "global_batch": 8,
          "warmup_steps": 10,
          "log_every": 10,
      },
  }
