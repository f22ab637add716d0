"""LoRA supervised fine-tuning of a tiny MoE model: adapters on the attention projections, the
dense MLPs and every routed expert (one adapter pair per expert, inside the grouped matmuls);
the base stays frozen and the optimizer state covers the adapters only (see the memory line).
A minute or two on 2 CPU cores:

    python -m jaxtrain.main --config configs/lora_sft_tiny.py

Then `python -m jaxtrain.converters export-hf --ckpt runs/lora_sft_tiny --out ADAPTER --adapter`
writes a PEFT adapter (`--merge` writes merged full weights). QLoRA: --config.lora.quantize=nf4.
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/lora_sft_tiny"
  c.model.update(vocab_size=272, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                 decoder_sparse_step=2)
  c.data.seq_len = 128
  c.train.update(steps=40, global_batch=8, lr=5e-3, warmup_steps=4, weight_decay=0.0, log_every=5)
  c.lora.update(rank=8, alpha=16.0)
  c.eval.batches = 2
  c.checkpoint.every = 20
  c.sample.update(max_new_tokens=32)
  return c
