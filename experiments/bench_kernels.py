"""Kernel benchmark: grouped matmul and attention, TFLOP/s per implementation, and the rows of
`kernels/auto_table.py` the measurements support.

  python experiments/bench_kernels.py                 # shapes chosen for the backend
  python experiments/bench_kernels.py --only gmm --gmm 65536,2048,1536,128 --iters 20
  python experiments/bench_kernels.py --sweep         # GPU: also our kernels under several tilings

GPU defaults (realistic MoE training shapes, bf16):
- gmm: 8k tokens x top-8 = 65,536 rows through (a) Qwen3-30B-A3B's experts, hidden 2048 -> fused
  gate/up 1536, 128 experts, balanced and skewed routing, and (b) DeepSeek-V3's, hidden 7168 ->
  fused gate/up 4096, 256 experts, balanced; forward and forward+backward, for "mosaic" (ours,
  Mosaic GPU), "triton" (ours, Triton), "tokamax" (when installed), "xla" (jax.lax.ragged_dot)
  and "dense" (one matmul of the same FLOPs: the ceiling).
- attention: causal, bf16, 16 query / 4 KV heads of 128, 32k tokens per batch, forward+backward at
  T = 4k, 8k, 32k, for "pallas" (ours), "cudnn", "tokamax" and "xla" (T <= 8k: its T x T scores).
CPU defaults are tiny shapes (our kernels in interpret mode) so the script finishes in about a
minute; the CPU numbers only show that every path runs.

FLOPs are the useful ones: gmm 2*m*k*n (x3 with the backward), attention 2*B*H*T*S*(D + Dv)
halved when causal (x3.5 with the backward: the backward does 2.5x the forward's matmuls).
Failures (a kernel that does not lower, out of memory, tokamax missing) are reported in the table,
not raised. Prints a markdown table and the auto-table rows; with $OUT set (or --out DIR) also
writes bench_kernels.md and bench_kernels.json there. Name the card beside any number quoted.
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
from jaxtrain.kernels.gmm_mosaic import MosaicGmmTiling
from jaxtrain.kernels.tokamax_ops import installed as tokamax_installed

# --sweep candidates (GPU): Triton tiles are powers of two >= 16.
GMM_SWEEP = [GmmTiling(128, 64, 128, 4, 3), GmmTiling(128, 64, 128, 8, 3), GmmTiling(64, 64, 128, 4, 4),
             GmmTiling(128, 32, 256, 8, 3), GmmTiling(256, 64, 128, 8, 3)]
MOSAIC_SWEEP = [MosaicGmmTiling(128, 128, 64, 128, 4), MosaicGmmTiling(128, 256, 64, 128, 3),
                MosaicGmmTiling(64, 128, 64, 128, 6), MosaicGmmTiling(128, 128, 64, 128, 6)]
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


GMM_IMPLS_GPU = ("mosaic", "triton", "tokamax", "xla", "dense")
GMM_IMPLS_CPU = ("mosaic", "triton", "tokamax", "xla", "blocked", "dense")
SWEEPS = {"triton": ("gmm", GMM_SWEEP, lambda t: f"triton{t.tm}x{t.tk}x{t.tn}w{t.num_warps}s{t.num_stages}"),
          "mosaic": ("gmm_mosaic", MOSAIC_SWEEP,
                     lambda t: f"mosaic{t.block_m}x{t.block_n}x{t.block_k}s{t.max_concurrent_steps}")}


def _missing(impl):
  """Why an implementation cannot be measured here (None: it can)."""
  if impl == "tokamax" and not tokamax_installed():
    return "tokamax not installed"
  return None


def bench_gmm(rows, m, k, n, g, dtype, iters, passes, impls, routings=("balanced", "skewed"), sweep=False):
  key = jax.random.key(0)
  k1, k2 = jax.random.split(key)
  lhs = jax.random.normal(k1, (m, k), dtype)
  rhs = jax.random.normal(k2, (g, k, n), dtype) * 0.05
  dense_rhs = rhs[0]
  for kind in routings:
    sizes = jnp.asarray(group_sizes(m, g, kind), jnp.int32)
    case = f"{m}x{k}x{n} g={g} {kind}"
    if kind == "skewed":
      s = np.asarray(sizes)
      case += f" (max {s.max()}, empty {(s == 0).sum()})"
    for mode in passes:
      flops = 2.0 * m * k * n * (3 if mode == "fwd+bwd" else 1)
      for impl in impls:
        if _missing(impl):
          rows.append(dict(section=f"gmm {mode}", case=case, impl=impl, ms=None, tflops=None, error=_missing(impl)))
          continue
        if impl == "dense":
          def f(a, b, s):
            return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
          w = dense_rhs
        else:
          def f(a, b, s, impl=impl):
            return gmm(a, b, s, impl=impl)
          w = rhs
        variants = [(impl, None, None)]
        if sweep and impl in SWEEPS:
          op, candidates, label = SWEEPS[impl]
          variants += [(label(t), op, t) for t in candidates]
        for name, op, tiling in variants:
          with block_sizes(op or "gmm", tiling), block_sizes(("t" + op) if op else "tgmm", tiling):
            # A fresh function object per variant: jit caches traces by function identity.
            if mode == "fwd":
              fn = jax.jit(lambda a, b, s, f=f: f(a, b, s))
            else:
              fn = jax.jit(jax.grad(lambda a, b, s, f=f: jnp.sum(f(a, b, s).astype(jnp.float32)), argnums=(0, 1)))
            run_case(rows, f"gmm {mode}", case, name, flops, fn, (lhs, w, sizes), iters)


# ----------------------------------------------------------------------------- attention

def bench_attention(rows, seq_lens, tokens, heads, kv_heads, head_dim, dtype, iters, impls, sweep=False,
                    xla_max_len=None):
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
      skip = _missing(impl) or (f"skipped: T x T scores at T > {xla_max_len}"
                                if impl == "xla" and xla_max_len and T > xla_max_len else None)
      if skip:
        rows.append(dict(section="attn fwd+bwd", case=case, impl=name, ms=None, tflops=None, error=skip))
        continue

      def loss(q, k, v, impl=impl):
        return jnp.sum(attention(q, k, v, causal=True, impl=impl).astype(jnp.float32))

      with block_sizes("attention", blocks):
        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        run_case(rows, "attn fwd+bwd", case, name, flops, fn, (q, k, v), iters)


# ----------------------------------------------------------------------------- report

def table(rows, device: str) -> str:
  out = [f"# Kernel benchmark on {device} (jax {jax.__version__})", "",
         "| section | case | impl | ms | TFLOP/s | vs xla | vs dense |", "|---|---|---|---:|---:|---:|---:|"]
  ref = {(r["section"], r["case"]): r["ms"] for r in rows if r["impl"] == "xla" and r["ms"]}
  dense = {(r["section"], r["case"]): r["ms"] for r in rows if r["impl"] == "dense" and r["ms"]}
  for r in rows:
    key = (r["section"], r["case"])
    if r["error"]:
      out.append(f"| {r['section']} | {r['case']} | {r['impl']} | - | - | {r['error']} | |")
      continue
    speed = f"{ref[key] / r['ms']:.2f}x" if key in ref else "-"
    of_dense = f"{dense[key] / r['ms']:.0%}" if key in dense else "-"
    out.append(f"| {r['section']} | {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.2f} | {speed} | {of_dense} |")
  return "\n".join(out)


# Which rows decide "auto": the training-relevant pass of each op, over the implementations a
# config can name (no sweep variants, no dense ceiling).
AUTO_SECTIONS = {"gmm": "gmm fwd+bwd", "attention": "attn fwd+bwd"}
AUTO_CANDIDATES = {"gmm": ("mosaic", "triton", "pallas", "tokamax", "xla", "blocked"),
                   "attention": ("pallas", "cudnn", "tokamax", "xla", "chunked")}


def auto_rows(rows, platform: str, device: str, date: str) -> list[str]:
  """`auto_table.AUTO` rows for this device kind: per op, the implementation with the best
  geometric-mean TFLOP/s over the cases where it ran, among those that ran in every case."""
  lines = []
  for op, section in AUTO_SECTIONS.items():
    cases = sorted({r["case"] for r in rows if r["section"] == section})
    scores = {}
    for impl in AUTO_CANDIDATES[op]:
      got = [r["tflops"] for r in rows if r["section"] == section and r["impl"] == impl and r["tflops"]]
      if cases and len(got) == len(cases):
        scores[impl] = float(np.exp(np.mean(np.log(got))))
    if scores:
      best = max(scores, key=scores.get)
      others = ", ".join(f"{i} {v:.3g}" for i, v in sorted(scores.items(), key=lambda kv: -kv[1]))
      lines.append(f'AUTO["{op}"]: ("{platform}", "{device}", "{best}"),  # bench_kernels {date}, '
                   f"geomean TFLOP/s over {len(cases)} {section} cases: {others}")
  return lines


# (m, k, n, g, routings): rows = tokens x top-k; k = hidden; n = fused gate/up width.
GMM_CASES_GPU = [(65536, 2048, 1536, 128, ("balanced", "skewed")),  # Qwen3-30B-A3B experts, 8k tokens, top-8
                 (65536, 7168, 4096, 256, ("balanced",))]  # DeepSeek-V3 experts, 8k tokens, top-8
GMM_CASES_CPU = [(512, 64, 64, 8, ("balanced", "skewed"))]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", choices=["gmm", "attention"], default=None)
  p.add_argument("--gmm", default=None, help="m,k,n,g: one case, balanced and skewed (default: per backend)")
  p.add_argument("--gmm-impls", default=None, help="comma-separated (default: per backend)")
  p.add_argument("--seq-lens", default=None, help="comma-separated T values (default: per backend)")
  p.add_argument("--tokens", type=int, default=None, help="tokens per attention batch (B = tokens // T)")
  p.add_argument("--heads", default=None, help="query,kv heads (default: per backend)")
  p.add_argument("--head-dim", type=int, default=None)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--iters", type=int, default=None)
  p.add_argument("--impls", default=None, help="attention implementations, comma-separated "
                 "(default: pallas,xla,tokamax and chunked on CPU, cudnn on GPU)")
  p.add_argument("--sweep", action="store_true", help="also time our kernels under several tilings")
  p.add_argument("--budget-s", type=float, default=BUDGET_S, help="timed seconds per case at most")
  p.add_argument("--out", default=os.environ.get("OUT"), help="folder for bench_kernels.md/.json (default $OUT)")
  args = p.parse_args(argv)
  globals()["BUDGET_S"] = args.budget_s

  backend = jax.default_backend()
  device = jax.devices()[0].device_kind
  small = backend == "cpu"  # platform defaults: tiny shapes where there is no accelerator
  if args.gmm:
    cases = [(*map(int, args.gmm.split(",")), ("balanced", "skewed"))]
  else:
    cases = GMM_CASES_CPU if small else GMM_CASES_GPU
  gmm_impls = args.gmm_impls.split(",") if args.gmm_impls else list(GMM_IMPLS_CPU if small else GMM_IMPLS_GPU)
  seq_lens = [int(x) for x in (args.seq_lens or ("64,128" if small else "4096,8192,32768")).split(",")]
  tokens = args.tokens or (256 if small else 32768)
  heads, kv_heads = map(int, (args.heads or ("2,1" if small else "16,4")).split(","))
  head_dim = args.head_dim or (32 if small else 128)
  iters = args.iters or (2 if small else 10)
  dtype = jnp.dtype(args.dtype)
  # chunked is the default off GPU; on GPU it is opt-in (--impls) to keep gpu_check.sh's budget.
  impls = args.impls.split(",") if args.impls else (["pallas", "xla", "tokamax"]
                                                    + (["chunked"] if small else ["cudnn"]))
  print(f"backend={backend} device={device} jax={jax.__version__}", flush=True)

  rows: list[dict] = []
  # Interpret mode where nothing compiles Pallas (CPU), so our kernels' rows still run.
  ctx = interpret_mode(True) if small else contextlib.nullcontext()
  with ctx:
    if args.only in (None, "gmm"):
      for m, k, n, g, routings in cases:
        bench_gmm(rows, m, k, n, g, dtype, iters, passes=("fwd", "fwd+bwd"), impls=gmm_impls, routings=routings,
                  sweep=args.sweep and not small)
    if args.only in (None, "attention"):
      bench_attention(rows, seq_lens, tokens, heads, kv_heads, head_dim, dtype, iters, impls,
                      sweep=args.sweep and not small, xla_max_len=None if small else 8192)

  text = table(rows, device)
  auto = auto_rows(rows, backend, device, time.strftime("%Y-%m-%d"))
  print("\n" + text)
  print("\nauto table rows for kernels/auto_table.py (fastest measured fwd+bwd per op on this device kind):")
  print("\n".join("  " + line for line in auto) or "  (none: no implementation ran in every case)")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_kernels.md"), "w") as f:
      f.write(text + "\n\nauto table rows:\n\n" + "\n".join(auto) + "\n")
    with open(os.path.join(args.out, "bench_kernels.json"), "w") as f:
      json.dump(dict(device=device, backend=backend, jax=jax.__version__, rows=rows, auto=auto), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
