"""GRPO (DAPO settings) on Qwen3-30B-A3B with LoRA adapters, from its Hugging Face checkpoint,
on a math-style prompt set whose records carry the reference answer.

    python -m jaxtrain.main --config configs/qwen3_30b_a3b_grpo_lora.py \\
        --config.model.init_from=/data/Qwen3-30B-A3B --config.data.tokenizer=/data/Qwen3-30B-A3B \\
        --config.data.sources.prompts.path=/data/math_prompts.jsonl

Records: {"prompt": [{"role": "user", "content": "..."}], "answer": "42"} (a string prompt works
too); the chat template adds the generation prompt. Rewards: the last number of the completion
equals `answer` (weight 1) and a <think>...</think><answer>...</answer> layout (weight 0.2).

DAPO: token-level loss, clip-higher (0.2 / 0.28), dynamic sampling (groups whose 8 completions
all score the same are dropped and more prompts drawn, up to 3 rounds), a soft overlong
penalty over the last 1024 of 4096 new tokens, no KL term (beta=0: no reference forward pass).

Mesh as configs/qwen3_30b_a3b_sft.py: 16 GPUs of 80 GB, expert=8 x fsdp=2. A rollout of
16 prompts x 8 completions holds a bf16 KV cache of 128 rows x (512 + 4096) slots x 48 layers x
4 KV heads x 128 x 2 (k, v) x 2 bytes = 58 GiB in all, ~3.6 GiB per device when the rows
spread over the 16 devices (not measured yet).

LoRA (rank 32) on the attention projections and on every routed expert; the base weights are
frozen (optimizer state for the adapters only) and the sampler draws from the adapted model.
beta=0 here; with beta > 0 the KL reference is the base with the adapters disabled (no copy).
`export-hf --adapter` writes the result as a PEFT adapter, `--merge` as full weights.
"""

from jaxtrain import defaults

LORA = dict(rank=32, alpha=64.0, targets="q_proj,k_proj,v_proj,o_proj,experts")


def get_config():
  c = defaults()
  c.workdir = "runs/qwen3_30b_a3b_grpo_lora"
  c.model.update(
      arch="qwen3_moe", vocab_size=151936, hidden_size=2048, num_layers=48, num_heads=32, num_kv_heads=4,
      head_dim=128, intermediate_size=6144, qk_norm=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
      max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
      norm_topk_prob=True, router="softmax_topk", tie_word_embeddings=False,
      dtype="bfloat16", param_dtype="float32", remat="full", aux_loss_weight=0.0)
  c.mesh.update(data=1, fsdp=-1, expert=8, sequence=1, tensor=1)
  c.model.init_from = "checkpoints/Qwen3-30B-A3B"  # the Hugging Face directory (override)
  c.data.update(tokenizer="checkpoints/Qwen3-30B-A3B")
  c.data.sources = {"prompts": {"kind": "jsonl", "path": "data/math_prompts.jsonl", "format": "prompt",
                                "holdout": "none"}}
  c.train.update(method="grpo", steps=500, micro_batches=8, lr=1e-6, schedule="constant", warmup_steps=10,
                 weight_decay=0.0, clip_norm=1.0, log_every=1)
  c.grpo.update(
      num_generations=8, prompts_per_step=16, num_iterations=1, max_prompt_tokens=512, max_new_tokens=4096,
      temperature=1.0, top_p=1.0, loss_type="dapo", scale_rewards="group", epsilon_low=0.2, epsilon_high=0.28,
      beta=0.0, dynamic_sampling=True, max_rollout_rounds=3, overlong_buffer=1024, overlong_penalty=1.0,
      decode_chunk=64,
      rewards={"answer": {"function": "number_match", "column": "answer", "weight": 1.0},
               "format": {"function": "format", "weight": 0.2}})
  c.lora.update(LORA)
  c.train.lr = 2e-5
  c.checkpoint.update(every=20, keep=2)
  c.sample.enabled = False
  return c
