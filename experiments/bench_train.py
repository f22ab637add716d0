"""Training throughput: jaxtrain vs Hugging Face transformers + PyTorch, side by side.

Same architecture (built from one jaxtrain model config; transformers gets the equivalent HF
config), same batch, sequence length and dtype, AdamW in both. Each framework runs in its own
subprocess so peak memory is its own. Reports tokens/s, median step time after warm-up, peak
memory, jaxtrain's compile time and MFU where the device's peak is known.

    python experiments/bench_train.py                      # CPU: quickstart-sized MoE
    python experiments/bench_train.py --preset gpu-moe     # one 80 GB GPU, bf16
    python experiments/bench_train.py --preset gpu-dense-1b --frameworks jaxtrain,jaxtrain-fp8,torch-eager
    python experiments/bench_train.py --preset gpu-dsv3-moe    # DeepSeek-V3-like MoE (MLA, 64 experts)
    python experiments/bench_train.py --preset cpu-vlm     # Qwen3-VL-MoE-style, 4 images per row

Vision-language presets (`images`: pictures per row) feed both frameworks the same token rows
with image placeholders and the same pixel arrays (the processor's layout), and also time the
vision tower and projector alone (forward + backward: "vision ms") and, for jaxtrain, its
blocks alone, so the table shows where the tower's time goes. Tokens/s counts text and
placeholder tokens (the language model's tokens).

"jaxtrain-fp8" is jaxtrain with `model.fp8=True` (FP8 GEMMs with fine-grained scaling; "native" on
GPU); its MFU is against the same bf16 peak, so it compares directly with the bf16 row.
Prints a table; with --out (or $OUT set) also writes it as JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

PRESETS = {
    # The quickstart model (configs/quickstart.py) at its batch shape.
    "cpu-moe": dict(model=dict(vocab_size=272, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                               intermediate_size=512, num_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=256, rope_theta=10000.0),
                    batch=8, seq=256, dtype="float32", steps=10, warmup=3),
    "cpu-dense": dict(model=dict(vocab_size=272, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                                 head_dim=32, intermediate_size=1024, num_experts=0, rope_theta=10000.0),
                      batch=8, seq=256, dtype="float32", steps=10, warmup=3),
    # ~1.3B parameters, Llama/Qwen3-style dense; fits one 80 GB card with AdamW in fp32 masters.
    "gpu-dense-1b": dict(model=dict(arch="qwen3", vocab_size=32768, hidden_size=2048, num_layers=16, num_heads=16,
                                    num_kv_heads=8, head_dim=128, intermediate_size=8192, num_experts=0,
                                    rope_theta=1e6, remat="save_dots"),
                         batch=8, seq=2048, dtype="bfloat16", steps=10, warmup=3),
    # DeepSeek-V3-like: MLA, sigmoid group routing with the aux-free bias, one shared expert, first
    # layer dense, 64 routed experts top-6 of width 1024 (~3.2B total, ~0.6B active parameters;
    # fp32 masters + AdamW ~52 GB).
    "gpu-dsv3-moe": dict(model=dict(arch="deepseek_v3", vocab_size=32768, hidden_size=2048, num_layers=8,
                                    num_heads=16, attention="mla", q_lora_rank=768, kv_lora_rank=512,
                                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, qk_norm=False,
                                    intermediate_size=8192, num_experts=64, num_experts_per_tok=6,
                                    moe_intermediate_size=1024, shared_expert_intermediate_size=1024,
                                    first_k_dense=1, router="sigmoid_group", n_group=8, topk_group=4,
                                    routed_scaling_factor=2.5, rope_theta=1e4, remat="save_dots"),
                         batch=8, seq=2048, dtype="bfloat16", steps=10, warmup=3),
    # Qwen3-MoE-style, 64 experts top-8 (~2.1B total, ~0.5B active parameters).
    "gpu-moe": dict(model=dict(vocab_size=32768, hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=4,
                               head_dim=64, intermediate_size=4096, num_experts=64, num_experts_per_tok=8,
                               moe_intermediate_size=512, rope_theta=1e6, remat="save_dots"),
                    batch=8, seq=2048, dtype="bfloat16", steps=10, warmup=3),
}
# Qwen3-VL-MoE-style: the cpu-moe language model with a rope_vit tower (4 blocks, DeepStack into
# 3 layers); rows of 256 tokens with 4 images of 64 x 64 pixels (64 patches, 16 tokens each).
PRESETS["cpu-vlm"] = dict(
    model=dict(arch="qwen3_vl_moe", vocab_size=272, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
               head_dim=32, intermediate_size=512, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
               rope_theta=10000.0, mrope_section=(8, 4, 4), norm_topk_prob=True,
               vision=dict(tower="rope_vit", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                           patch_size=8, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
                           deepstack_layers=(1, 2, 3), image_token_id=270, video_token_id=271, row_capacity=256)),
    batch=8, seq=256, images=4, image_side=64, dtype="float32", steps=10, warmup=3)
# Qwen3-VL-MoE-style at ~1.5B parameters for one GPU: 16 images of 448 x 448 per 4096-token row.
PRESETS["gpu-vlm"] = dict(
    model=dict(arch="qwen3_vl_moe", vocab_size=32768, hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=4,
               head_dim=64, intermediate_size=4096, num_experts=64, num_experts_per_tok=8, moe_intermediate_size=512,
               rope_theta=1e6, mrope_section=(12, 10, 10), norm_topk_prob=True, remat="save_dots",
               vision=dict(tower="rope_vit", hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304,
                           patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=2304,
                           deepstack_layers=(8, 16, 24), image_token_id=32000, video_token_id=32001,
                           row_capacity=16384, remat="full")),
    batch=4, seq=4096, images=16, image_side=448, dtype="bfloat16", steps=10, warmup=3)
FRAMEWORKS = ("jaxtrain", "jaxtrain-fp8", "torch-eager", "torch-compile")


def vlm_rows(spec: dict, cfg):
  """Token rows with `images` placeholder runs each (between vision start / end tokens and
  text), and the processor's arrays for them: (ids [B, T + 1], pixel_values, image_grid_thw)."""
  import numpy as np
  v = cfg.vision
  B, T, n = spec["batch"], spec["seq"], spec["images"]
  grid = spec["image_side"] // v.patch_size
  per = grid * grid // v.spatial_merge_size ** 2
  rng = np.random.default_rng(0)
  text = min(v.image_token_id, v.video_token_id) - 2  # ordinary tokens below the special ones
  ids = rng.integers(0, text, (B, T + 1))
  for b in range(B):
    for i in range(n):
      start = 1 + i * (T // n)
      if start + per + 2 > T:
        raise ValueError(f"{n} images of {per} tokens do not fit rows of {T}")
      ids[b, start] = text
      ids[b, start + 1:start + 1 + per] = v.image_token_id
      ids[b, start + 1 + per] = text + 1
  pixels = rng.normal(size=(B * n * grid * grid, v.patch_dim)).astype(np.float32)
  grids = np.tile(np.array([[1, grid, grid]], np.int64), (B * n, 1))
  return ids.astype(np.int32), pixels, grids


# ------------------------------------------------------------------------------------------
# Workers (each runs in its own process and prints one JSON line)
# ------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jaxtrain_step(spec: dict, lora: dict | None = None):
  """The compiled jaxtrain train step for a preset spec, with its initial state and one batch:
  `(compiled, state, batch, cfg, mesh, compile_s)`. `lora`: the run's `lora` section (e.g.
  `{"rank": 16, "quantize": "nf4"}`; default full fine-tuning); what trains and what stays
  frozen is decided as in the Trainer (posttrain/setup.py). Also used by
  experiments/profile_step.py and experiments/bench_lora.py."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxtrain.train.run_config import load_config
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.parallel.mesh import make_mesh, mesh_context
  from jaxtrain.posttrain import methods, setup
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.optimizer import make_optimizer, schedule
  from jaxtrain.train.step import make_train_step
  from jaxtrain.models.vision.inputs import model_batch

  config = load_config(base={"model": {**spec["model"], "dtype": spec["dtype"], "fp8": bool(spec.get("fp8"))},
                             "train": {"global_batch": spec["batch"], "steps": 1000, "warmup_steps": 10},
                             "data": {"seq_len": spec["seq"]}, "lora": lora or {}})
  cfg = ModelConfig.from_config(config.model, config.kernels)
  mesh = make_mesh(config.mesh)
  B, T = spec["batch"], spec["seq"]
  objective = methods.make(config)
  with mesh_context(mesh):
    plan = setup.plan(config, cfg, mesh, objective)
    tx = make_optimizer(config.train)
    model_state_sh = state_lib.model_state_shardings(plan.abstract_model_state, mesh)
    state_sh = state_lib.state_shardings(tx, plan.abstract_params, plan.params_sharding, mesh, model_state_sh)
    params, frozen = plan.split(state_lib.init_params(cfg, 0, plan.base_sharding))
    state = state_lib.init_state(params, tx, state_sh, 0, state_lib.init_model_state(cfg, 0, model_state_sh))
    state = state.replace(frozen=frozen)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)
    pixels = {}
    if cfg.vision.enabled:
      ids, pixels["pixel_values"], pixels["image_grid_thw"] = vlm_rows(spec, cfg)
    batch = {"input_ids": ids[:, :T], "target_ids": ids[:, 1:], "loss_mask": np.ones((B, T), np.int32),
             "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
             **pixels}
    batch = {k: jnp.asarray(v) for k, v in model_batch(cfg, batch, T).items()}
    step = jax.jit(make_train_step(plan.parts.graphdef, cfg, config.train, tx, schedule(config.train),
                                   objective=objective, parts=plan.parts), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
  return compiled, state, batch, cfg, mesh, compile_s


def run_jaxtrain(spec: dict, lora: dict | None = None, name: str = "jaxtrain") -> dict:
  import jax
  import numpy as np

  from jaxtrain.parallel import memory
  from jaxtrain.parallel.mesh import mesh_context
  from jaxtrain.posttrain.qlora import QuantizedWeight
  from jaxtrain.train import flops
  from jaxtrain.train import state as state_lib

  compiled, state, batch, cfg, mesh, compile_s = jaxtrain_step(spec, lora)
  B, T = spec["batch"], spec["seq"]
  state_bytes = sum(memory.bytes_per_device(t) for t in (state.params, state.opt_state, state.frozen))
  weights = jax.tree.leaves((state.params, state.frozen), is_leaf=lambda x: isinstance(x, QuantizedWeight))
  total_params = sum(math.prod(w.shape) for w in weights)  # a QLoRA base's weights counted once, not as codes
  with mesh_context(mesh):
    times, losses = [], []
    for i in range(spec["warmup"] + spec["steps"]):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch)
      loss = float(metrics["loss"])  # blocks
      if i >= spec["warmup"]:
        times.append(time.perf_counter() - t0)
        losses.append(loss)
  step_s = float(np.median(times))
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  # Backends with their own device memory report its peak; on the CPU it is the process's memory.
  peak_mb = stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else _peak_rss_mb()
  fpt = flops.train_flops_per_token(cfg, T)
  peak = flops.device_peak(cfg.dtype)
  tps = B * T / step_s
  extra = jaxtrain_vision_times(cfg, state, batch, mesh, spec) if cfg.vision.enabled else {}
  if spec.get("fp8") and name == "jaxtrain":
    name = "jaxtrain-fp8"
  return {"framework": name, "device": device.device_kind, "tokens_per_sec": tps, "step_ms": step_s * 1e3,
          "peak_mem_mb": peak_mb, "compile_s": compile_s, "mfu": flops.mfu(fpt, tps, mesh.size, peak),
          "loss_first": losses[0], "params": total_params, "trainable": state_lib.count_params(state.params),
          "state_mb": state_bytes / 2**20, "gmm": cfg.gmm_impl, "attention": cfg.attention_impl,
          "fp8": cfg.fp8_gemms, **extra}


def _median_ms(fn, warmup: int, steps: int) -> float:
  import jax
  import numpy as np
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return float(np.median(times)) * 1e3


def jaxtrain_vision_times(cfg, state, batch, mesh, spec) -> dict:
  """Forward + backward time of the vision tower with its projector, and of its blocks alone."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtrain.models import factory
  from jaxtrain.models.vlm import VISION_KEYS
  from jaxtrain.models.vision.common import run_stacked
  from jaxtrain.models.vision.rope_vit import rope_2d
  from jaxtrain.parallel.mesh import mesh_context

  graphdef = factory.abstract_model(cfg)[0]
  inputs = {k: batch[k] for k in VISION_KEYS[cfg.vision.tower]}
  rows = batch["input_ids"].shape[0]

  def tower(params):
    feats, deep = nnx.merge(graphdef, params).encode(inputs, rows)
    return jnp.sum(feats) + (0.0 if deep is None else jnp.sum(deep))

  def blocks(params, x):
    v = cfg.vision
    model = nnx.merge(graphdef, params)
    cos, sin = rope_2d(inputs["vision_hw"], v.head_dim, v.rope_theta)
    return jnp.sum(run_stacked(model.vision.blocks, x, cos, sin, inputs["vision_segments"], lo=0, hi=v.num_layers))

  tower_grad = jax.jit(jax.grad(tower))
  x = jnp.zeros(inputs["vision_patches"].shape[:2] + (cfg.vision.hidden_size,), jnp.dtype(cfg.dtype)) + 0.1
  blocks_grad = jax.jit(jax.grad(blocks))
  with mesh_context(mesh):
    vision_ms = _median_ms(lambda: tower_grad(state.params), spec["warmup"], spec["steps"])
    blocks_ms = _median_ms(lambda: blocks_grad(state.params, x), spec["warmup"], spec["steps"])
  return {"vision_ms": vision_ms, "vision_blocks_ms": blocks_ms}


def run_torch(spec: dict, compiled: bool, wrap=None, name: str | None = None) -> dict:
  """transformers + PyTorch on the same architecture. `wrap(model) -> model` (e.g. PEFT's
  get_peft_model) runs before the optimizer is built over the parameters that require grad."""
  import numpy as np
  import torch
  import transformers

  from jaxtrain.train.run_config import load_config
  from jaxtrain.converters.hf_config import to_hf
  from jaxtrain.models.config import ModelConfig

  config = load_config(base={"model": spec["model"]})
  cfg = ModelConfig.from_config(config.model)
  hf_dict = to_hf(cfg)
  hf_config = transformers.AutoConfig.for_model(**hf_dict)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  auto = transformers.AutoModelForImageTextToText if cfg.vision.enabled else transformers.AutoModelForCausalLM
  model = auto.from_config(hf_config).to(device)
  if wrap is not None:
    model = wrap(model)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
  autocast = spec["dtype"] != "float32"
  amp_dtype = getattr(torch, spec["dtype"]) if autocast else None
  B, T = spec["batch"], spec["seq"]
  vision = {}
  if cfg.vision.enabled:
    ids, pixels, grids = vlm_rows(spec, cfg)
    ids = torch.from_numpy(ids.astype(np.int64)).to(device)
    vision = {"pixel_values": torch.from_numpy(pixels).to(device), "image_grid_thw": torch.from_numpy(grids).to(device),
              "mm_token_type_ids": (ids[:, :T] == cfg.vision.image_token_id).long()}
  else:
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T + 1))).to(device)
  inputs, labels = ids[:, :T], ids[:, 1:]

  def train_step():
    with torch.autocast(device, dtype=amp_dtype, enabled=autocast):
      logits = model(input_ids=inputs, **vision).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  step = torch.compile(train_step) if compiled else train_step
  times, compile_s = [], None
  for i in range(spec["warmup"] + spec["steps"]):
    if device == "cuda":
      torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = float(step())
    if device == "cuda":
      torch.cuda.synchronize()
    if i == 0 and compiled:
      compile_s = time.perf_counter() - t0
    if i >= spec["warmup"]:
      times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  peak_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()
  extra = {}
  if cfg.vision.enabled and not compiled:
    def tower():
      with torch.autocast(device, dtype=amp_dtype, enabled=autocast):
        out = model.model.get_image_features(vision["pixel_values"], vision["image_grid_thw"])
        total = torch.cat(out.pooler_output).float().sum() + sum(torch.cat(d).float().sum()
                                                                 for d in out.deepstack_features)
      total.backward()
      model.zero_grad(set_to_none=True)
    tower_times = []
    for i in range(spec["warmup"] + spec["steps"]):
      t0 = time.perf_counter()
      tower()
      if device == "cuda":
        torch.cuda.synchronize()
      if i >= spec["warmup"]:
        tower_times.append(time.perf_counter() - t0)
    extra["vision_ms"] = float(np.median(tower_times)) * 1e3
  state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
      t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
  return {**extra, "framework": name or ("torch-compile" if compiled else "torch-eager"),
          "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "tokens_per_sec": B * T / step_s, "step_ms": step_s * 1e3, "peak_mem_mb": peak_mb,
          "compile_s": compile_s, "mfu": None, "loss_first": loss,
          "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable),
          "state_mb": state_bytes / 2**20,
          "attention": getattr(hf_config, "_attn_implementation", None), "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def run_worker(script: str, name: str, spec: dict, timeout: float, extra: tuple[str, ...] = ()) -> dict:
  """`script --worker name --spec JSON [extra]` in its own process (so its peak memory is its
  own): the last JSON line it prints, or {"framework": name, "error": ...}."""
  cmd = [sys.executable, os.path.abspath(script), "--worker", name, "--spec", json.dumps(spec), *extra]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"framework": name, "error": f"timed out after {timeout:.0f}s"}
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"framework": name, "error": " | ".join(tail)[-300:]}
  return json.loads(lines[-1])


def preset_spec(args) -> dict:
  """The spec of `args.preset` (default: cpu-moe on CPU, gpu-moe elsewhere; written back to
  args) with the --steps / --warmup / --batch / --seq overrides."""
  if args.preset is None:
    import jax
    args.preset = "cpu-moe" if jax.default_backend() == "cpu" else "gpu-moe"
  spec = dict(PRESETS[args.preset])
  for key in ("steps", "warmup", "batch", "seq"):
    if getattr(args, key) is not None:
      spec[key] = getattr(args, key)
  return spec


def _fmt(value, spec=",.0f"):
  return "-" if value is None else format(value, spec)


def table(results: list[dict], baseline: str = "torch-eager") -> str:
  base = next((r for r in results if r.get("framework") == baseline and "error" not in r), None)
  vision = any("vision_ms" in r for r in results)
  extra_head = " vision ms (blocks) |" if vision else ""
  rows = ["| framework | tokens/s | step ms | peak MB | compile s | MFU | vs " + baseline + " |" + extra_head,
          "|---|---|---|---|---|---|---|" + ("---|" if vision else "")]
  for r in results:
    if "error" in r:
      rows.append(f"| {r['framework']} | error: {r['error']} | | | | | |" + (" |" if vision else ""))
      continue
    ratio = r["tokens_per_sec"] / base["tokens_per_sec"] if base else None
    extra = ""
    if vision:
      blocks = f" ({_fmt(r['vision_blocks_ms'], '.1f')})" if r.get("vision_blocks_ms") else ""
      extra = f" {_fmt(r.get('vision_ms'), '.1f')}{blocks} |"
    rows.append(f"| {r['framework']} | {_fmt(r['tokens_per_sec'])} | {_fmt(r['step_ms'], '.1f')} | "
                f"{_fmt(r['peak_mem_mb'])} | {_fmt(r.get('compile_s'), '.1f')} | "
                f"{_fmt(r.get('mfu'), '.1%')} | {_fmt(ratio, '.2f')}x |" + extra)
  return "\n".join(rows)


def _write(out: str, preset: str, spec: dict, results: list[dict]) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"bench_train_{preset}.json"), "w") as f:
    json.dump({"preset": preset, "spec": spec, "results": results}, f, indent=2)
  with open(os.path.join(out, f"bench_train_{preset}.md"), "w") as f:
    f.write(f"preset {preset}: batch {spec['batch']} x seq {spec['seq']}, {spec['dtype']}\n\n" + table(results) + "\n")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                 help="default: cpu-moe on CPU, gpu-moe on GPU")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
  p.add_argument("--steps", type=int)
  p.add_argument("--warmup", type=int)
  p.add_argument("--batch", type=int)
  p.add_argument("--seq", type=int)
  p.add_argument("--timeout", type=float, default=900, help="seconds per framework")
  p.add_argument("--out", default=os.environ.get("OUT"), help="directory for results (json, md)")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--spec", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.worker:
    spec = json.loads(args.spec)
    if args.worker.startswith("jaxtrain"):
      result = run_jaxtrain({**spec, "fp8": args.worker == "jaxtrain-fp8"})
    else:
      result = run_torch(spec, args.worker == "torch-compile")
    print(json.dumps(result))
    return 0

  spec = preset_spec(args)
  frameworks = [f for f in args.frameworks.split(",") if f]
  unknown = set(frameworks) - set(FRAMEWORKS)
  if unknown:
    p.error(f"unknown frameworks {sorted(unknown)}; choose from {FRAMEWORKS}")
  print(f"preset {args.preset}: batch {spec['batch']} x seq {spec['seq']}, {spec['dtype']}, "
        f"{spec['steps']} timed steps after {spec['warmup']} warm-up", flush=True)
  results = []
  for framework in frameworks:
    r = run_worker(__file__, framework, spec, args.timeout)
    results.append(r)
    print(f"  {framework}: " + (r.get("error") or f"{r['tokens_per_sec']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step"),
          flush=True)
    if args.out:  # after every framework: a later timeout keeps what was measured
      _write(args.out, args.preset, spec, results)
  print(table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
