"""LoRA (or QLoRA) fine-tuning of Qwen3-30B-A3B from its Hugging Face checkpoint, adapters on the
attention projections and on all 128 experts of every layer (rank 16, one adapter pair per
expert inside the grouped matmuls), on ONE 8-GPU host (expert=8):

    python -m jaxtrain.main --config configs/qwen3_30b_a3b_lora.py \\
        --config.model.init_from=/data/Qwen3-30B-A3B --config.data.tokenizer=/data/Qwen3-30B-A3B \\
        --config.data.sources.sft.path=/data/sft.jsonl [--config.lora.quantize=nf4]

Memory per device (the start-up report's figures, from experiments/lora_memory.py; 8 devices,
expert=8): adapters 0.34 GiB + their Adam state 0.69 GiB, bf16 frozen base 9.6 GiB, activations
~11.3 GiB: ~22.0 GiB. With lora.quantize=nf4 the base takes 3.6 GiB: ~15.9 GiB. Full
fine-tuning on this mesh: 40.2 GiB with bf16 masters, 77 GiB with fp32 masters
(configs/qwen3_30b_a3b_sft.py, which therefore uses two hosts).
Export: `python -m jaxtrain.converters export-hf --ckpt runs/qwen3_30b_a3b_lora --out ADAPTER
--adapter` (loads with peft.PeftModel.from_pretrained) or `--merge`.
"""

import os

from jaxtrain.config import load_file

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config():
  c = load_file(os.path.join(HERE, "qwen3_30b_a3b_sft.py"))  # that recipe's get_config()
  c.workdir = "runs/qwen3_30b_a3b_lora"
  c.model.param_dtype = "bfloat16"  # the frozen base in bf16 (fp32 buys nothing when it does not train)
  c.mesh.update(data=1, fsdp=-1, expert=8, sequence=1, tensor=1)
  c.lora.update(rank=16, alpha=32.0, targets="q_proj,k_proj,v_proj,o_proj,experts")
  c.train.update(lr=1e-4, global_batch=32, micro_batches=2)
  return c
