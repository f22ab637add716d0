"""Supervised fine-tuning of a DeepSeek-V3-class model: Moonlight-16B-A3B (Moonshot AI; the
DeepSeek-V3 architecture, model_type deepseek_v3, at 27 layers / 64 experts, top-6, 2 shared
experts, 16B parameters, 3B active). The same recipe runs DeepSeek-V3 / Kimi-K2 checkpoints
(FP8 block-quantized releases are dequantized while importing) with their sizes and a mesh
to match (see below).

    python -m jaxtrain.main --config configs/moonlight_16b_a3b_sft.py \\
        --config.model.init_from=/data/Moonlight-16B-A3B --config.data.tokenizer=/data/Moonlight-16B-A3B \\
        --config.data.sources.sft.path=/data/sft.jsonl

Mesh: 8 GPUs of 80 GB (one host), fsdp=8 (ZeRO-3: every parameter split 8 ways, gathered at
its op). fp32 masters + Adam + gradients = 16 bytes per parameter: 30.5 GiB per device, plus
activations with remat "full" for micro-batches of 1 x 4096 tokens per device (~4 GiB
estimated). Expert parallelism on one host (expert=8, fsdp=1) replicates the 1.6B non-expert
parameters over the expert axis: 50 GiB of state per device; from 16 GPUs up, expert=8 x fsdp=2
needs 25.5 GiB and moves tokens instead of expert weights. A full DeepSeek-V3 / Kimi-K2 (671B /
1T parameters, 10.7 / 16 TB of training state) needs 256+ GPUs: expert=8..64, fsdp over the rest.

Training-time routing: the score-correction bias moves by router_bias_update_rate after every
step (aux-loss-free balancing), plus DeepSeek-V3's small sequence-wise balance loss.
The architecture fields are Moonlight-16B-A3B's config.json; with model.init_from set they are
checked against the checkpoint (any difference is an error naming the field).
"""

from jaxtrain import defaults


def get_config():
  c = defaults()
  c.workdir = "runs/moonlight_16b_a3b_sft"
  c.model.update(
      arch="deepseek_v3", vocab_size=163840, hidden_size=2048, num_layers=27, num_heads=16, num_kv_heads=16,
      head_dim=192, qk_norm=False, attention="mla", q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128,
      qk_rope_head_dim=64, v_head_dim=128, rope_interleave=True, rope_theta=50000.0, max_position_embeddings=8192,
      rms_norm_eps=1e-5, intermediate_size=11264, first_k_dense=1, num_experts=64, num_experts_per_tok=6,
      moe_intermediate_size=1408, shared_expert_intermediate_size=2 * 1408, router="sigmoid_group", n_group=1,
      topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.446, tie_word_embeddings=False,
      router_bias_update_rate=0.001, aux_loss_weight=0.0, seq_aux_loss_weight=1e-4,
      dtype="bfloat16", param_dtype="float32", remat="full")
  c.model.init_from = "checkpoints/Moonlight-16B-A3B"  # the Hugging Face directory (override)
  c.mesh.update(data=1, fsdp=-1, expert=1, sequence=1, tensor=1)
  c.data.update(seq_len=4096, tokenizer="checkpoints/Moonlight-16B-A3B", loss_on="assistant", overlong="truncate")
  c.data.sources = {"sft": {"kind": "jsonl", "path": "data/sft.jsonl", "format": "chat"}}
  c.train.update(steps=2000, global_batch=32, micro_batches=4, lr=1e-5, warmup_steps=50, weight_decay=0.0,
                 log_every=10)
  c.checkpoint.update(every=200, keep=2)
  c.eval.update(every=200, batches=8)
  c.sample.enabled = False
  return c
