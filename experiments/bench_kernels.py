"""Kernel benchmark: grouped matmul and attention, TFLOP/s per implementation.

  python experiments/bench_kernels.py                 # shapes chosen for the backend
  python experiments/bench_kernels.py --only gmm --gmm 16384,2048,768,128 --iters 20
  python experiments/bench_kernels.py --sweep         # GPU: also pallas under several block sizes

GPU defaults: gmm m=16384 tokens, k=2048, n=768, g=128 experts with balanced and skewed group
sizes, forward and forward+backward, for "pallas", "xla" (jax.lax.ragged_dot), "blocked" and a
dense matmul of equal FLOPs; causal attention (bf16, D=128, 16 query / 4 KV heads, 32k tokens
per batch) forward+backward at T = 2k, 8k, 32k for "pallas", "cudnn" and "xla". CPU defaults are
tiny shapes (Pallas in interpret mode) so the script finishes in well under a minute; the CPU
numbers only show that every path runs.

FLOPs are the useful ones: gmm 2*m*k*n (x3 with the backward), attention 2*B*H*T*S*(D + Dv)
halved when causal (x3.5 with the backward: the backward does 2.5x the forward's matmuls).
Failures (a kernel that does not lower, out of memory) are reported in the table, not raised.
Prints a markdown table; with $OUT set (or --out DIR) also writes bench_kernels.md and
bench_kernels.json there. Name the card beside any number quoted from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.kernels import FlashBlocks, GmmTiling, attention, block_sizes, gmm, interpret_mode

# --sweep candidates (GPU): Triton tiles are powers of two >= 16.
GMM_SWEEP = [GmmTiling(128, 64, 128, 4, 3), GmmTiling(128, 64, 128, 8, 3), GmmTiling(64, 64, 128, 4, 4),
             GmmTiling(128, 32, 256, 8, 3), GmmTiling(256, 64, 128, 8, 3)]
ATTN_SWEEP = [FlashBlocks(128, 64, 64, 64, 8, 2, 4, 2), FlashBlocks(128, 128, 32, 32, 8, 2, 4, 2),
              FlashBlocks(64, 64, 64, 64, 4, 3, 4, 3), FlashBlocks(128, 64, 32, 64, 8, 3, 8, 2)]


BUDGET_S = 2.0  # timed seconds per case at most (a slow path, e.g. a dense-lowered ragged_dot, gets fewer iters)


def timeit(fn, *args, iters: int) -> float:
  """Median seconds per call of a jitted function (the first call, with compilation, is not timed)."""
  jax.block_until_ready(fn(*args))
  times = []
  start = time.perf_counter()
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > BUDGET_S:
      break
  return float(np.median(times))


def run_case(rows, section, case, impl, flops, fn, args, iters):
  try:
    sec = timeit(fn, *args, iters=iters)
    rows.append(dict(section=section, case=case, impl=impl, ms=sec * 1e3, tflops=flops / sec / 1e12, error=None))
  except Exception as e:  # noqa: BLE001 - report and go on (OOM, lowering errors)
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:100]
    rows.append(dict(section=section, case=case, impl=impl, ms=None, tflops=None, error=msg))
  r = rows[-1]
  print(f"  {section:12s} {case:34s} {impl:10s} "
        + (f"{r['ms']:9.3f} ms {r['tflops']:8.2f} TFLOP/s" if r["error"] is None else r["error"]), flush=True)


# ----------------------------------------------------------------------------- gmm

def group_sizes(m: int, g: int, kind: str, seed: int = 0) -> np.ndarray:
  if kind == "balanced":
    sizes = np.full(g, m // g)
    sizes[: m - sizes.sum()] += 1
    return sizes
  rng = np.random.default_rng(seed)  # skewed: Dirichlet(0.3) loads, a few experts empty
  sizes = rng.multinomial(m, rng.dirichlet(np.full(g, 0.3)))
  return sizes


def bench_gmm(rows, m, k, n, g, dtype, iters, passes, sweep=False):
  key = jax.random.key(0)
  k1, k2 = jax.random.split(key)
  lhs = jax.random.normal(k1, (m, k), dtype)
  rhs = jax.random.normal(k2, (g, k, n), dtype) * 0.05
  dense_rhs = rhs[0]
  for kind in ("balanced", "skewed"):
    sizes = jnp.asarray(group_sizes(m, g, kind), jnp.int32)
    case = f"{m}x{k}x{n} g={g} {kind}"
    if kind == "skewed":
      s = np.asarray(sizes)
      case += f" (max {s.max()}, empty {(s == 0).sum()})"
    for mode in passes:
      flops = 2.0 * m * k * n * (3 if mode == "fwd+bwd" else 1)
      for impl in ("pallas", "xla", "blocked", "dense"):
        if impl == "dense":
          def f(a, b, s):
            return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
          w = dense_rhs
        else:
          def f(a, b, s, impl=impl):
            return gmm(a, b, s, impl=impl)
          w = rhs
        variants = [(impl, None)]
        if sweep and impl == "pallas":
          variants += [(f"pallas{t.tm}x{t.tk}x{t.tn}w{t.num_warps}s{t.num_stages}", t) for t in GMM_SWEEP]
        for name, tiling in variants:
          with block_sizes("gmm", tiling), block_sizes("tgmm", tiling):  # traced (and so read) inside
            # A fresh function object per variant: jit caches traces by function identity.
            if mode == "fwd":
              fn = jax.jit(lambda a, b, s, f=f: f(a, b, s))
            else:
              fn = jax.jit(jax.grad(lambda a, b, s, f=f: jnp.sum(f(a, b, s).astype(jnp.float32)), argnums=(0, 1)))
            run_case(rows, f"gmm {mode}", case, name, flops, fn, (lhs, w, sizes), iters)


# ----------------------------------------------------------------------------- attention

def bench_attention(rows, seq_lens, tokens, heads, kv_heads, head_dim, dtype, iters, impls, sweep=False):
  for T in seq_lens:
    B = max(1, tokens // T)
    key = jax.random.key(T)
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (B, T, heads, head_dim), dtype)
    k = jax.random.normal(kk, (B, T, kv_heads, head_dim), dtype)
    v = jax.random.normal(kv, (B, T, kv_heads, head_dim), dtype)
    flops = 3.5 * 2.0 * B * heads * T * T * (2 * head_dim) / 2
    case = f"B={B} T={T} H={heads}/{kv_heads} D={head_dim} causal"
    variants = [(impl, None) for impl in impls]
    if sweep and "pallas" in impls:
      variants += [(f"pallas{b.block_q}x{b.block_k}/{b.block_q_bwd}x{b.block_k_bwd}w{b.num_warps}s{b.num_stages}", b)
                   for b in ATTN_SWEEP]
    for name, blocks in variants:
      impl = "pallas" if name.startswith("pallas") else name

      def loss(q, k, v, impl=impl):
        return jnp.sum(attention(q, k, v, causal=True, impl=impl).astype(jnp.float32))

      with block_sizes("attention", blocks):
        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        run_case(rows, "attn fwd+bwd", case, name, flops, fn, (q, k, v), iters)


# ----------------------------------------------------------------------------- report

def table(rows, device: str) -> str:
  out = [f"# Kernel benchmark on {device} (jax {jax.__version__})", "",
         "| section | case | impl | ms | TFLOP/s | vs xla |", "|---|---|---|---:|---:|---:|"]
  ref = {(r["section"], r["case"]): r["ms"] for r in rows if r["impl"] == "xla" and r["ms"]}
  for r in rows:
    base = ref.get((r["section"], r["case"]))
    if r["error"]:
      out.append(f"| {r['section']} | {r['case']} | {r['impl']} | - | - | {r['error']} |")
    else:
      speed = f"{base / r['ms']:.2f}x" if base else "-"
      out.append(f"| {r['section']} | {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.2f} | {speed} |")
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", choices=["gmm", "attention"], default=None)
  p.add_argument("--gmm", default=None, help="m,k,n,g (default: per backend)")
  p.add_argument("--seq-lens", default=None, help="comma-separated T values (default: per backend)")
  p.add_argument("--tokens", type=int, default=None, help="tokens per attention batch (B = tokens // T)")
  p.add_argument("--heads", default=None, help="query,kv heads (default: per backend)")
  p.add_argument("--head-dim", type=int, default=None)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--impls", default=None, help="attention implementations, comma-separated "
                 "(default: pallas,xla and chunked on CPU, cudnn on GPU)")
  p.add_argument("--sweep", action="store_true", help="also time the pallas kernels under several block sizes")
  p.add_argument("--budget-s", type=float, default=BUDGET_S, help="timed seconds per case at most")
  p.add_argument("--out", default=os.environ.get("OUT"), help="folder for bench_kernels.md/.json (default $OUT)")
  args = p.parse_args(argv)
  globals()["BUDGET_S"] = args.budget_s

  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  small = backend == "cpu"  # platform defaults: tiny shapes where there is no accelerator
  m, k, n, g = map(int, (args.gmm or ("512,64,64,8" if small else "16384,2048,768,128")).split(","))
  seq_lens = [int(x) for x in (args.seq_lens or ("64,128" if small else "2048,8192,32768")).split(",")]
  tokens = args.tokens or (256 if small else 32768)
  heads, kv_heads = map(int, (args.heads or ("2,1" if small else "16,4")).split(","))
  head_dim = args.head_dim or (32 if small else 128)
  iters = args.iters or (2 if small else 10)
  dtype = jnp.dtype(args.dtype)
  # chunked is the default off GPU; on GPU it is opt-in (--impls) to keep gpu_check.sh's budget.
  impls = args.impls.split(",") if args.impls else ["pallas", "xla"] + (["chunked"] if small else ["cudnn"])
  print(f"backend={backend} device={device} jax={jax.__version__}", flush=True)

  rows: list[dict] = []
  # Interpret mode where nothing compiles Pallas (CPU), so the pallas rows still run.
  ctx = interpret_mode(True) if small else contextlib.nullcontext()
  with ctx:
    if args.only in (None, "gmm"):
      bench_gmm(rows, m, k, n, g, dtype, iters, passes=("fwd", "fwd+bwd"), sweep=args.sweep and not small)
    if args.only in (None, "attention"):
      bench_attention(rows, seq_lens, tokens, heads, kv_heads, head_dim, dtype, iters, impls,
                      sweep=args.sweep and not small)

  text = table(rows, device)
  print("\n" + text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_kernels.md"), "w") as f:
      f.write(text + "\n")
    with open(os.path.join(args.out, "bench_kernels.json"), "w") as f:
      json.dump(dict(device=device, backend=backend, jax=jax.__version__, rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
