"""DPO with LoRA adapters on a tiny MoE model (experts included), on arithmetic preference pairs
(configs/data/preference_example.jsonl, written by configs/data/make_preference.py) in TRL's
standard and conversational formats. A minute or two on 2 CPU cores:

    python -m jaxtrain.main --config configs/dpo_tiny.py

metrics.jsonl logs rewards/chosen, rewards/rejected, rewards/margins and rewards/accuracies
per step; the reference is the base model with the adapters disabled (no second copy). Other
losses: --config.preference.loss=ipo|hinge|robust|simpo|orpo. QLoRA: --config.lora.quantize=nf4.
"""

import os

from jaxtrain import defaults

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  c = defaults()
  c.workdir = "runs/dpo_tiny"
  c.model.update(vocab_size=272, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
  c.data.update(seq_len=64, eval_fraction=0.05)
  c.data.sources = {"pairs": {"kind": "jsonl", "path": os.path.join(HERE, "data", "preference_example.jsonl"),
                              "format": "preference"}}
  c.train.update(method="dpo", steps=40, global_batch=8, lr=1e-2, warmup_steps=4, weight_decay=0.0, log_every=5)
  c.preference.update(loss="sigmoid", beta=0.5)
  c.lora.update(rank=8, alpha=16.0)
  c.eval.batches = 4
  c.checkpoint.every = 20
  c.sample.update(prompt="Q: What is 12 + 30?\nA:", max_new_tokens=8, temperature=0.0)
  return c
