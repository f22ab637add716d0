"""The planner's predicted per-device peak vs XLA's own (`compiled.memory_analysis()` of the real
train step, compiled for 8 simulated CPU devices; nothing is run), over dense, MoE, MLA
(DeepSeek-style), GPT-OSS-style and vision-language (Qwen3-VL-MoE-style) models at scaled-down
widths, sequence lengths 256 to 64k, every remat policy (none, full, save_dots,
save_attention_out, and the host-offload ones, whose host memory on the CPU is its device
memory) and several meshes.
(Predicted vs measured step time is not compared here yet.)

    python experiments/validate_plan.py                   # the table for experiments/RESULTS.md
    python experiments/validate_plan.py --only moe-fsdp8 --json

Each case prints one table row: predicted and XLA peak (MiB), the error, and the prediction's
breakdown (state, saved activations, largest layer backward, loss).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

DEVICES = 8
if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES}".strip()

FAMILIES = {
    # Llama / Qwen3-style dense decoder.
    "dense": dict(arch="qwen3", vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                  head_dim=32, intermediate_size=1024, num_experts=0),
    # Qwen3-MoE-style: every layer MoE, 16 experts top-4.
    "moe": dict(arch="qwen3_moe", vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                head_dim=32, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128),
    # DeepSeek-V3-style: MLA, one dense layer then MoE with sigmoid group routing and a shared expert.
    "mla": dict(arch="deepseek_v3", vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8,
                qk_norm=False, attention="mla", q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
                qk_rope_head_dim=16, v_head_dim=32, rope_interleave=True, intermediate_size=512, first_k_dense=1,
                num_experts=16, num_experts_per_tok=4, moe_intermediate_size=64, shared_expert_intermediate_size=64,
                router="sigmoid_group", n_group=4, topk_group=2, routed_scaling_factor=2.5),
    # GPT-OSS-style: sinks, alternating sliding/full attention, clamped SwiGLU experts with biases.
    "gptoss": dict(arch="gpt_oss", vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2,
                   head_dim=32, qk_norm=False, attention_bias=True, attention_out_bias=True, attention_sinks=True,
                   sliding_window=128, layer_types=("sliding_attention", "full_attention") * 2, num_experts=16,
                   num_experts_per_tok=4, moe_intermediate_size=128, router="topk_softmax", expert_bias=True,
                   expert_activation="clamped_swiglu", norm_topk_prob=False),
    # Qwen3-VL-MoE-style vision-language model: the rope_vit tower (2D rotary attention per image,
    # 2x2 patch merger, DeepStack into the first two layers), multimodal rotary positions and the
    # Qwen3-MoE language model above. Each row carries 1024 patch slots (256 merged tokens).
    "vlm": dict(arch="qwen3_vl_moe", vocab_size=8192, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                head_dim=32, mrope_section=(8, 4, 4), num_experts=16, num_experts_per_tok=4,
                moe_intermediate_size=128, router="softmax_topk", norm_topk_prob=True,
                vision=dict(tower="rope_vit", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                            activation="gelu_tanh", patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
                            num_position_embeddings=64, deepstack_layers=(0, 1), image_token_id=8190,
                            video_token_id=8191, row_capacity=1024)),
}

# name: (family, devices, mesh, remat, seq_len, global_batch, extra model fields)
CASES = {
    "dense-1dev-256": ("dense", 1, {}, "none", 256, 8, {}),
    "dense-fsdp8-1k-full": ("dense", 8, {"fsdp": 8}, "full", 1024, 8, {}),
    "dense-data2-4k-dots": ("dense", 8, {"data": 2, "fsdp": 4}, "save_dots", 4096, 8, {}),
    "dense-tp2-4k-attnout": ("dense", 8, {"fsdp": 4, "tensor": 2}, "save_attention_out", 4096, 8, {}),
    "dense-sp2-16k-full": ("dense", 8, {"fsdp": 4, "sequence": 2}, "full", 16384, 4, {}),
    "dense-fsdp8-64k-full": ("dense", 8, {"fsdp": 8}, "full", 65536, 8, {}),
    "moe-1dev-1k": ("moe", 1, {}, "none", 1024, 4, {}),
    "moe-fsdp8-1k": ("moe", 8, {"fsdp": 8}, "none", 1024, 8, {}),
    "moe-ep4-4k-full": ("moe", 8, {"fsdp": 2, "expert": 4}, "full", 4096, 8, {}),
    "moe-ep8-1k-dots": ("moe", 8, {"fsdp": 1, "expert": 8}, "save_dots", 1024, 8, {}),
    "moe-tp2-ep2-4k-dots": ("moe", 8, {"fsdp": 2, "expert": 2, "tensor": 2}, "save_dots", 4096, 8, {}),
    "moe-fsdp8-16k-attnout": ("moe", 8, {"fsdp": 8}, "save_attention_out", 16384, 8, {}),
    "moe-fsdp8-64k-full": ("moe", 8, {"fsdp": 8}, "full", 65536, 8, {}),
    "mla-fsdp8-1k": ("mla", 8, {"fsdp": 8}, "none", 1024, 8, {}),
    "mla-ep4-4k-dots": ("mla", 8, {"fsdp": 2, "expert": 4}, "save_dots", 4096, 8, {}),
    "mla-data2-4k-attnout": ("mla", 8, {"data": 2, "fsdp": 4}, "save_attention_out", 4096, 8, {}),
    "mla-fsdp8-16k-full": ("mla", 8, {"fsdp": 8}, "full", 16384, 8, {}),
    "gptoss-fsdp8-1k": ("gptoss", 8, {"fsdp": 8}, "none", 1024, 8, {}),
    "gptoss-ep2-4k-dots": ("gptoss", 8, {"fsdp": 4, "expert": 2}, "save_dots", 4096, 8, {}),
    "gptoss-data2-16k-full": ("gptoss", 8, {"data": 2, "fsdp": 4}, "full", 16384, 8, {}),
    "gptoss-fsdp8-64k-attnout": ("gptoss", 8, {"fsdp": 8}, "save_attention_out", 65536, 8, {}),
    # Host offload: on the CPU the host memory is the device memory, so the offloaded residuals
    # stay in the same heap (the planner counts them there for platform "cpu").
    "dense-fsdp8-1k-offdots": ("dense", 8, {"fsdp": 8}, "offload_dots", 1024, 8, {}),
    "mla-data2-4k-offdots": ("mla", 8, {"data": 2, "fsdp": 4}, "offload_dots", 4096, 8, {}),
    "moe-fsdp8-1k-offinput": ("moe", 8, {"fsdp": 8}, "offload_input", 1024, 8, {}),
    "gptoss-fsdp8-4k-offinput": ("gptoss", 8, {"fsdp": 8}, "offload_input", 4096, 8, {}),
    "vlm-fsdp8-1k": ("vlm", 8, {"fsdp": 8}, "none", 1024, 8, {}),
    "vlm-ep2-4k-dots": ("vlm", 8, {"fsdp": 4, "expert": 2}, "save_dots", 4096, 8, {}),
    "vlm-data2-4k-full": ("vlm", 8, {"data": 2, "fsdp": 4}, "full", 4096, 8, {}),
}


def case_config(name: str):
  from jaxtrain.train.run_config import load_config
  family, devices, mesh, remat, seq, batch, extra = CASES[name]
  model = {**FAMILIES[family], **extra, "remat": remat}
  sizes = {"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **mesh}
  return load_config(base={"model": model, "mesh": sizes, "data": {"seq_len": seq},
                           "train": {"global_batch": batch, "loss_vocab_chunk": 2048}}), devices


def run_case(name: str) -> dict:
  import jax
  from jaxtrain.plan import memory as plan_memory
  from jaxtrain.plan.workload import Workload, candidate_from_config
  from jaxtrain.train.compiled import compile_train_step, step_memory

  config, devices = case_config(name)
  t0 = time.perf_counter()
  predicted = plan_memory.predict(Workload.from_config(config), candidate_from_config(config), "cpu")
  plan_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  with vision_batch(config):
    compiled, _ = compile_train_step(config, devices=jax.devices()[:devices])
  compile_s = time.perf_counter() - t0
  xla = step_memory(compiled)
  return {"case": name, "predicted": predicted.total, "xla": xla.peak, "error": predicted.total / xla.peak - 1,
          "breakdown": predicted.as_dict(), "xla_parts": xla.as_dict(), "plan_s": plan_s, "compile_s": compile_s}


@contextlib.contextmanager
def vision_batch(config):
  """For a vision-language model, the compiled step's abstract batch also carries the per-row
  vision inputs the trainer feeds it (models/vision/inputs.model_shapes, sharded by rows like the
  text); `compile_train_step` builds the text keys only."""
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.models.vision import inputs as vision_inputs
  from jaxtrain.parallel.rules import logical_to_spec
  from jaxtrain.train import compiled as compiled_lib
  cfg = ModelConfig.from_config(config.model, config.kernels)
  if not cfg.vision.enabled:
    yield
    return
  text_batch = compiled_lib.abstract_batch

  def with_vision(config, mesh):
    import jax
    batch, shardings = text_batch(config, mesh)
    B, T = config.train.global_batch, config.data.seq_len
    for k, (shape, dtype) in vision_inputs.model_shapes(cfg, B, T).items():
      sharding = jax.sharding.NamedSharding(mesh, logical_to_spec(vision_inputs.input_axes(k, len(shape)), shape, mesh))
      batch[k], shardings[k] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding), sharding
    return batch, shardings

  compiled_lib.abstract_batch = with_vision
  try:
    yield
  finally:
    compiled_lib.abstract_batch = text_batch


def row(r: dict) -> str:
  family, devices, mesh, remat, seq, batch, extra = CASES[r["case"]]
  b = r["breakdown"]
  mib = lambda v: f"{v / 2**20:,.1f}"  # noqa: E731
  mesh_text = " ".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "1 device"
  dtype = extra.get("dtype", "float32")
  return (f"| {r['case']} | {family} | {mesh_text} | {remat} | {seq:,} | {dtype} | {mib(r['predicted'])} | "
          f"{mib(r['xla'])} | {100 * r['error']:+.1f}% | {mib(b['state'])} | {mib(b['saved'])} | "
          f"{mib(b['layer_work'])} | {mib(b['loss'])} |")


HEADER = ("| case | family | mesh (8 CPU devices) | remat | seq | dtype | predicted MiB | XLA MiB | error | "
          "state MiB | saved act. MiB | layer bwd MiB | loss MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", default="", help="comma-separated case names (default: all)")
  p.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
  args = p.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or list(CASES)
  if not args.json:
    print(HEADER, flush=True)
  worst = 0.0
  for name in names:
    r = run_case(name)
    worst = max(worst, abs(r["error"]))
    print(json.dumps(r) if args.json else row(r), flush=True)
  if not args.json:
    print(f"\n{len(names)} cases; largest error {100 * worst:.1f}%")
  return 0


if __name__ == "__main__":
  sys.exit(main())
