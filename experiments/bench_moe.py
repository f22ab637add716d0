"""Forward+backward throughput of one MoE layer, by implementation.

- dropless/<gmm impl>: sort by expert, grouped matmul (`xla` = jax.lax.ragged_dot reference,
  `blocked`, `pallas`), un-sort;
- capacity: fixed capacity factor, einsum over [experts, capacity, hidden] buffers;
- naive: every expert runs on every token, masked (what a per-expert loop costs under jit).

Sweeps the number of experts at fixed active parameters (top-k and expert width fixed, so the
useful FLOPs per token are constant and cost should track active, not total, parameters), with
balanced and skewed (Zipf-like) routing.

    python experiments/bench_moe.py                 # CPU-sized defaults, about a minute
    python experiments/bench_moe.py --tokens 16384 --hidden 2048 --inter 768 --experts 32,64,128
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.models.moe import route
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel import moe
from jaxtrain.kernels import dispatch


def naive(x, ids, weights, valid, gate_up, down, *, act):
  """Each expert on every token, weighted by the routing weight (0 where not chosen)."""
  X = gate_up.shape[0]
  combine = jnp.sum(jax.nn.one_hot(ids, X, dtype=x.dtype) * weights[..., None].astype(x.dtype), axis=1)  # [N, X]
  h = jnp.einsum("ne,xefi->nxfi", x, gate_up)
  y = jnp.einsum("nxi,xie->nxe", act(h[:, :, 0]) * h[:, :, 1], down)
  return jnp.einsum("nxe,nx->ne", y, combine * valid[:, None])


def make_layer(impl: str):
  act = jax.nn.silu
  if impl == "naive":
    return lambda x, ids, w, v, gu, d: naive(x, ids, w, v, gu, d, act=act)
  if impl == "capacity":
    return lambda x, ids, w, v, gu, d: moe.capacity(x, ids, w, v, gu, d, act=act, capacity_factor=1.25)[0]
  gmm_impl = impl.split("/")[1]
  return lambda x, ids, w, v, gu, d: moe.dropless(x, ids, w, v, gu, d, act=act, impl=gmm_impl)[0]


def bench(impl, tokens, hidden, inter, experts, top_k, skew, dtype, iters):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(tokens, hidden)), dtype)
  logits = rng.normal(size=(tokens, experts)).astype(np.float32)
  if skew:
    logits += np.log(1.0 / np.arange(1, experts + 1)) * skew  # Zipf-like preference for low ids
  cfg = ModelConfig(num_experts=experts, num_experts_per_tok=top_k)
  ids, w, _ = route(jnp.asarray(logits), cfg)
  valid = jnp.ones((tokens,), bool)
  gu = jnp.asarray(rng.normal(size=(experts, hidden, 2, inter)) * 0.02, dtype)
  dn = jnp.asarray(rng.normal(size=(experts, inter, hidden)) * 0.02, dtype)
  layer = make_layer(impl)
  loss = lambda x, gu, dn: jnp.sum(layer(x, ids, w, valid, gu, dn).astype(jnp.float32) ** 2)
  f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  jax.block_until_ready(f(x, gu, dn))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x, gu, dn))
    times.append(time.perf_counter() - t0)
  step = float(np.median(times))
  active_flops = 3 * 2 * tokens * top_k * 3 * hidden * inter  # fwd+bwd of the active expert matmuls
  load = np.bincount(np.asarray(ids).ravel(), minlength=experts)
  return step, active_flops / step, load.max() / load.mean()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  cpu = jax.default_backend() == "cpu"
  p.add_argument("--tokens", type=int, default=2048 if cpu else 16384)
  p.add_argument("--hidden", type=int, default=128 if cpu else 2048)
  p.add_argument("--inter", type=int, default=128 if cpu else 768)
  p.add_argument("--top-k", type=int, default=2 if cpu else 8)
  p.add_argument("--experts", default="4,8,16,32" if cpu else "32,64,128")
  p.add_argument("--impls", default=None, help="comma list; default: all that run on this backend")
  p.add_argument("--skews", default="0,2", help="routing skew strengths (0 = balanced)")
  p.add_argument("--dtype", default="float32" if cpu else "bfloat16")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--out", default=os.environ.get("OUT"))
  args = p.parse_args(argv)
  impls = args.impls.split(",") if args.impls else (
      ["dropless/blocked", "dropless/xla", "capacity", "naive"] if cpu else
      ["dropless/pallas", "dropless/xla", "dropless/blocked", "capacity", "naive"])
  dtype = jnp.dtype(args.dtype)
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); tokens {args.tokens}, hidden "
        f"{args.hidden}, expert width {args.inter}, top-{args.top_k}, {args.dtype}; fwd+bwd of one MoE layer")
  rows = ["| impl | experts | skew | max/mean load | ms | active TFLOP/s |", "|---|---|---|---|---|---|"]
  for skew in [float(s) for s in args.skews.split(",")]:
    for experts in [int(e) for e in args.experts.split(",")]:
      for impl in impls:
        if impl.startswith("dropless/"):
          name, _ = dispatch.resolve("gmm", impl.split("/")[1])
          if name != impl.split("/")[1]:
            continue  # not runnable here (would silently measure the fallback)
        if impl == "naive" and experts * args.tokens * args.inter * args.hidden > 2**33:
          continue  # would not fit; it is the point of the comparison anyway
        step, tflops, imbalance = bench(impl, args.tokens, args.hidden, args.inter, experts, args.top_k, skew,
                                        dtype, args.iters)
        row = f"| {impl} | {experts} | {skew:g} | {imbalance:.2f} | {step * 1e3:.1f} | {tflops / 1e12:.3f} |"
        rows.append(row)
        print(row, flush=True)
  text = "\n".join(rows)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_moe.md"), "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
