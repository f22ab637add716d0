"""Peak host memory while importing Hugging Face weights.

Builds a Qwen3-MoE checkpoint locally (random tensors written shard by shard with numpy and the
`safetensors` package; no torch, nothing downloaded), then imports it in a fresh subprocess per
case and reports the peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`)
against the size of the weights:

  baseline   RSS after importing jax/jaxtrain and starting the backend, before loading
  peak       ru_maxrss at the end (the process's lifetime maximum)
  extra      peak - baseline - final params: what loading needed beyond the parameters

Modes: `from_pretrained` and `import-hf` are the two import paths; `read` and `read-rows` time
the safetensors reader alone (`WeightDir.read` of every tensor, whole or in the loader's
CHUNK_BYTES row blocks, arrays dropped at once), so their `extra` is negative (no parameters
are kept) and `peak-baseline` is what reading needs.

The contract (issue 3, item 5): importing holds at most the final parameters plus one tensor
(plus one layer's experts while stacking), so `extra` should stay around the largest single
tensor, not grow with the model.

With --export, the fp32 checkpoint written by import-hf is exported back (`export_hf`) in a fresh
subprocess per (writer, shard size), and the writer's share of host memory is measured around the
`write_sharded` call alone (the parameters are already resident when it starts):

  at write   RSS when `write_sharded` is entered (parameters restored, nothing written yet)
  write peak high-water RSS while writing (VmHWM, reset with /proc/self/clear_refs on entry)
  writer     write peak - at write: host memory the writer needed on top of the parameters

Writers: `streaming` is `safetensors_write.write_sharded` (header first, then one tensor at a time
from the callback); `library` is `write_sharded_library` below (each shard's tensors collected
and written with `safetensors.numpy.save_file`, which needs all of them in memory at once);
`produce-only` calls the export's callback for every tensor and writes nothing: the memory that
producing the tensors takes by itself, which no writer can avoid.

    python experiments/import_memory.py                 # ~470 MB of fp32 weights
    python experiments/import_memory.py --layers 12     # bigger
    python experiments/import_memory.py --export --repeat 3   # import, reader and export tables
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def write_sharded_library(out_dir, tensors, produce, *, max_shard_bytes, bar=None, extra_metadata=None):
  """`safetensors_write.write_sharded` done with the library's writer: the same shard plan and
  index, but each shard's tensors are produced first and written by `safetensors.numpy.save_file`
  (which takes a dict of arrays, so a whole shard is in host memory at once)."""
  from safetensors.numpy import save_file
  from jaxtrain.converters.safetensors_io import SAFETENSORS_INDEX
  from jaxtrain.converters.safetensors_write import plan_shards
  shards = plan_shards(tensors, max_shard_bytes)
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map, total = {}, 0
  for name, shard in zip(names, shards):
    arrays = {t.key: np.ascontiguousarray(produce(t.key)) for t in shard}
    save_file(arrays, os.path.join(out_dir, name), metadata={"format": "pt"})
    for t in shard:
      weight_map[t.key] = name
      total += t.nbytes
    if bar is not None:
      bar.update(len(shard))
    del arrays
  with open(os.path.join(out_dir, SAFETENSORS_INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total, **(extra_metadata or {})}, "weight_map": weight_map}, f, indent=2)
  return names


def produce_only(out_dir, tensors, produce, **_):
  """No writer: produce each tensor and drop it (the floor under any writer's memory)."""
  for t in tensors:
    value = produce(t.key)
    del value
  return []


CHILD = r"""
import json, os, resource, sys, time
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
import jax, jax.numpy as jnp
import jaxtrain.converters as conv
jnp.zeros(1).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
status = lambda field: int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) * 1024
t = time.perf_counter()
extra = {}
if mode == "from_pretrained":
  model = conv.from_pretrained(path)
  from flax import nnx
  params = nnx.state(model, nnx.Param)
elif mode == "import-hf":
  conv.import_hf(path, out)
  params = None
elif mode in ("read", "read-rows"):  # the reader alone: every tensor, whole or in the loader's row blocks
  from jaxtrain.converters.load import CHUNK_BYTES
  from jaxtrain.converters.safetensors_io import WeightDir
  w = WeightDir(path)
  for key, info in w.infos.items():
    if mode == "read" or len(info.shape) < 2:
      value = w.read(key)
    else:
      step = max(1, CHUNK_BYTES // max(1, info.nbytes // info.shape[0]))
      for r0 in range(0, info.shape[0], step):
        value = w.read(key, rows=(r0, min(r0 + step, info.shape[0])))
    del value
  params = None
elif mode == "export-hf":
  writer, shard_size = sys.argv[4], sys.argv[5]
  from jaxtrain.converters import export as export_lib
  if writer in ("library", "produce-only"):
    sys.path.insert(0, os.path.dirname(sys.argv[6]))
    import import_memory
    write = import_memory.write_sharded_library if writer == "library" else import_memory.produce_only
  else:
    write = export_lib.write_sharded
  def measured(*a, **k):
    extra["hwm_before_write"] = status("VmHWM")
    extra["rss_at_write"] = status("VmRSS")
    try:
      with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
      extra["hwm_reset"] = True
    except OSError:
      extra["hwm_reset"] = False
    t0 = time.perf_counter()
    names = write(*a, **k)
    extra["write_seconds"] = time.perf_counter() - t0
    extra["write_peak"] = status("VmHWM")
    extra["writer"] = extra["write_peak"] - extra["rss_at_write"]
    extra["shards"] = len(names)
    return names
  export_lib.write_sharded = measured  # export.py calls the name it imported
  conv.export_hf(path, out, max_shard_size=shard_size, progress=False)
  params = None
seconds = time.perf_counter() - t
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, extra.get("hwm_before_write", 0))
nbytes = sum(x.nbytes for x in jax.tree.leaves(params)) if params is not None else None
print(json.dumps({"baseline": base, "peak": peak, "param_bytes": nbytes, "seconds": seconds, **extra}))
"""


def run_child(mode: str, hf_dir: str, out: str, *extra: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  shutil.rmtree(out, ignore_errors=True)  # import-hf / export-hf refuse a non-empty output directory
  r = subprocess.run([sys.executable, "-c", CHILD, mode, hf_dir, out, *extra], capture_output=True, text=True,
                     env=env)
  if r.returncode != 0:
    raise RuntimeError(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])


def run_median(repeat: int, *args: str) -> dict:
  """`run_child` `repeat` times (fresh processes); the median of every number."""
  runs = [run_child(*args) for _ in range(repeat)]
  return {k: (statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) and not isinstance(v, bool)
              else v) for k, v in runs[-1].items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--experts", type=int, default=24)
  parser.add_argument("--moe-inter", type=int, default=384)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--keep", default="", help="build the checkpoints here and keep them")
  parser.add_argument("--export", action="store_true",
                      help="also export the float32 import-hf checkpoint back to safetensors and measure the writer")
  parser.add_argument("--writers", default="produce-only,streaming,library",
                      help="with --export: any of produce-only, streaming, library")
  parser.add_argument("--shard-sizes", default="5GB,100MB", help="with --export: max_shard_size values")
  parser.add_argument("--repeat", type=int, default=1,
                      help="run every case this many times (fresh processes) and report medians")
  args = parser.parse_args()
  rows, export_rows = [], []
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
      for mode in ("read", "read-rows", "from_pretrained", "import-hf"):
        r = run_median(args.repeat, mode, hf_dir, os.path.join(root, f"ckpt_{dtype}_{mode}"))
        extra = r["peak"] - r["baseline"] - params_bytes
        rows.append((dtype, mode, info["weight_bytes"], params_bytes, r["baseline"], r["peak"], extra,
                     info["largest_tensor_bytes"], info["layer_experts_fp32_bytes"], r["seconds"]))
      if args.export and dtype == "float32":
        ckpt = os.path.join(root, f"ckpt_{dtype}_import-hf")
        for shard_size in args.shard_sizes.split(","):
          for writer in args.writers.split(","):
            out = os.path.join(root, f"export_{writer}_{shard_size}")
            r = run_median(args.repeat, "export-hf", ckpt, out, writer, shard_size, os.path.abspath(__file__))
            if not r["hwm_reset"]:
              print("warning: /proc/self/clear_refs not writable; 'write peak' is the process's lifetime peak",
                    file=sys.stderr)
            export_rows.append((writer, shard_size, r["shards"], info["weight_bytes"], r["rss_at_write"],
                                r["write_peak"], r["writer"], r["peak"], r["write_seconds"], r["seconds"]))
  header = ("weights", "mode", "weight MB", "fp32 params MB", "baseline RSS MB", "peak RSS MB",
            "peak-baseline MB", "(peak-baseline)/params", "extra over params MB", "largest tensor MB",
            "one layer's experts MB", "seconds")
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for dtype, mode, wb, pb, base, peak, extra, largest, layer, secs in rows:
    print(f"| {dtype} | {mode} | {wb / MB:.0f} | {pb / MB:.0f} | {base / MB:.0f} | {peak / MB:.0f} | "
          f"{(peak - base) / MB:.0f} | {(peak - base) / pb:.2f} | {extra / MB:.0f} | {largest / MB:.1f} | "
          f"{layer / MB:.1f} | {secs:.2f} |")
  if export_rows:
    header = ("writer", "max_shard_size", "shards", "weight MB", "RSS at write MB", "write peak MB",
              "writer MB (peak - at write)", "process peak MB", "write s", "export s")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for writer, shard_size, n, wb, at, wpeak, wextra, peak, wsecs, secs in export_rows:
      print(f"| {writer} | {shard_size} | {n} | {wb / MB:.0f} | {at / MB:.0f} | {wpeak / MB:.0f} | "
            f"{wextra / MB:.0f} | {peak / MB:.0f} | {wsecs:.2f} | {secs:.2f} |")


if __name__ == "__main__":
  main()
