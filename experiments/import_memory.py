"""Peak host memory while importing Hugging Face weights.

Builds a Qwen3-MoE checkpoint locally (random tensors written shard by shard with numpy and the
`safetensors` package; no torch, nothing downloaded), then imports it in a fresh subprocess per
case and reports the peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`)
against the size of the weights:

  baseline   RSS after importing jax/jaxtrain and starting the backend, before loading
  peak       ru_maxrss at the end (the process's lifetime maximum)
  extra      peak - baseline - final params: what loading needed beyond the parameters

The contract (issue 3, item 5): importing holds at most the final parameters plus one tensor
(plus one layer's experts while stacking), so `extra` should stay around the largest single
tensor, not grow with the model.

    python experiments/import_memory.py                 # ~470 MB of fp32 weights
    python experiments/import_memory.py --layers 12     # bigger
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MB = 2**20


def qwen3_moe_config(args) -> dict:
  return {
      "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": args.vocab,
      "hidden_size": args.hidden, "intermediate_size": 4 * args.hidden, "moe_intermediate_size": args.moe_inter,
      "num_hidden_layers": args.layers, "num_attention_heads": 8, "num_key_value_heads": 2,
      "head_dim": args.hidden // 8, "num_experts": args.experts, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
      "mlp_only_layers": [], "norm_topk_prob": True, "rms_norm_eps": 1e-6,
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "max_position_embeddings": 4096,
      "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False, "dtype": args.dtype,
  }


def layer_tensors(cfg: dict, i: int) -> dict[str, tuple[int, ...]]:
  E, D, H, KV = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
  I, X = cfg["moe_intermediate_size"], cfg["num_experts"]
  p = f"model.layers.{i}."
  shapes = {
      p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
      p + "self_attn.q_proj.weight": (H * D, E), p + "self_attn.k_proj.weight": (KV * D, E),
      p + "self_attn.v_proj.weight": (KV * D, E), p + "self_attn.o_proj.weight": (E, H * D),
      p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,), p + "mlp.gate.weight": (X, E),
  }
  for x in range(X):
    shapes.update({p + f"mlp.experts.{x}.gate_proj.weight": (I, E), p + f"mlp.experts.{x}.up_proj.weight": (I, E),
                   p + f"mlp.experts.{x}.down_proj.weight": (E, I)})
  return shapes


def build(directory: str, args) -> dict:
  """Writes config.json, one safetensors shard per layer (+ one for embeddings/head) and the index."""
  from safetensors.numpy import save_file
  import ml_dtypes
  cfg = qwen3_moe_config(args)
  dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}[args.dtype]
  rng = np.random.default_rng(0)
  groups = [{"model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"]),
             "model.norm.weight": (cfg["hidden_size"],),
             "lm_head.weight": (cfg["vocab_size"], cfg["hidden_size"])}]
  groups += [layer_tensors(cfg, i) for i in range(cfg["num_hidden_layers"])]
  n = len(groups)
  weight_map, total, largest = {}, 0, 0
  for g, shapes in enumerate(groups):
    name = f"model-{g + 1:05d}-of-{n:05d}.safetensors"
    tensors = {k: (0.02 * rng.standard_normal(s, dtype=np.float32)).astype(dtype) for k, s in shapes.items()}
    save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
    for k, t in tensors.items():
      weight_map[k] = name
      total += t.nbytes
      largest = max(largest, t.nbytes)
    del tensors
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(cfg, f)
  I, E, X = cfg["moe_intermediate_size"], cfg["hidden_size"], cfg["num_experts"]
  return {"weight_bytes": total, "largest_tensor_bytes": largest, "layer_experts_fp32_bytes": X * 3 * I * E * 4}


CHILD = r"""
import json, os, resource, sys, time
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
import jax, jax.numpy as jnp
import jaxtrain.converters as conv
jnp.zeros(1).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
if mode == "from_pretrained":
  model = conv.from_pretrained(path)
  from flax import nnx
  params = nnx.state(model, nnx.Param)
elif mode == "import-hf":
  conv.import_hf(path, out)
  params = None
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
nbytes = sum(x.nbytes for x in jax.tree.leaves(params)) if params is not None else None
print(json.dumps({"baseline": base, "peak": peak, "param_bytes": nbytes, "seconds": seconds}))
"""


def run_child(mode: str, hf_dir: str, out: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  r = subprocess.run([sys.executable, "-c", CHILD, mode, hf_dir, out], capture_output=True, text=True, env=env)
  if r.returncode != 0:
    raise RuntimeError(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--experts", type=int, default=24)
  parser.add_argument("--moe-inter", type=int, default=384)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--keep", default="", help="build the checkpoints here and keep them")
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = args.keep or tmp
    for dtype in args.dtypes.split(","):
      args.dtype = dtype
      hf_dir = os.path.join(root, f"qwen3_moe_{dtype}")
      os.makedirs(hf_dir, exist_ok=True)
      t = time.perf_counter()
      info = build(hf_dir, args)
      print(f"built {hf_dir}: {info['weight_bytes'] / MB:.0f} MB of {dtype} weights in {time.perf_counter() - t:.0f}s",
            file=sys.stderr)
      params_bytes = info["weight_bytes"] * (4 // np.dtype(np.float32 if dtype == "float32" else np.float16).itemsize)
      for mode in ("from_pretrained", "import-hf"):
        r = run_child(mode, hf_dir, os.path.join(root, f"ckpt_{dtype}_{mode}"))
        extra = r["peak"] - r["baseline"] - params_bytes
        rows.append((dtype, mode, info["weight_bytes"], params_bytes, r["baseline"], r["peak"], extra,
                     info["largest_tensor_bytes"], info["layer_experts_fp32_bytes"], r["seconds"]))
  header = ("weights", "mode", "weight MB", "fp32 params MB", "baseline RSS MB", "peak RSS MB",
            "peak-baseline MB", "(peak-baseline)/params", "extra over params MB", "largest tensor MB",
            "one layer's experts MB", "seconds")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for dtype, mode, wb, pb, base, peak, extra, largest, layer, secs in rows:
    print(f"| {dtype} | {mode} | {wb / MB:.0f} | {pb / MB:.0f} | {base / MB:.0f} | {peak / MB:.0f} | "
          f"{(peak - base) / MB:.0f} | {(peak - base) / pb:.2f} | {extra / MB:.0f} | {largest / MB:.1f} | "
          f"{layer / MB:.1f} | {secs:.1f} |")


if __name__ == "__main__":
  main()
