"""GPU check for the expert-parallel exchange and the sharded attention wrapper, on ONE device.

A mesh with mesh.expert=1 skips the exchange, so this forces it: `routed_experts(...,
exchange="ragged" | "padded")` under a 1-device mesh runs the full shard_map path with a
single peer (ragged_all_to_all with one peer is well defined). XLA:CPU has no
ragged-all-to-all, so this is where the `ragged` path is compiled and checked.

1. MoE layer: forward and gradients (x, routing weights, both expert weights) of the local
   dropless path vs the exchange, ragged and padded, with the grouped matmul impl "auto"
   (Pallas on GPU) and "xla".
2. Sharded attention (`parallel.sequence.sharded_attention`, shard_map around the kernel,
   Pallas on GPU) vs `kernels.attention`, forward and gradients.
3. The tiny MoE model, 3 train steps on one GPU: exchange ragged vs padded (fp32 losses and
   gradient norms within 1e-5 relative).

Run from the project root: python3 experiments/gpu_ep_check.py  (exit status 1 on a mismatch)
`--cpu-dry-run` runs the same script on any backend with exchange "ragged_emulated" (an
all-gather stand-in for ragged_all_to_all) in place of "ragged" (checks the script, not the
collective).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from jaxtrain import kernels
from jaxtrain.parallel import moe, sequence
from jaxtrain.parallel.mesh import make_mesh, mesh_context

FAILED: list[str] = []


def check(name: str, got, want, rtol: float, atol: float = 1e-6) -> None:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = float(np.max(np.abs(got - want) / (atol + rtol * np.abs(want)))) if got.size else 0.0
  ok = bool(np.all(np.isfinite(got))) and err <= 1.0
  print(f"  {'ok ' if ok else 'BAD'} {name:<48} max |diff| {float(np.max(np.abs(got - want))):.2e} "
        f"(tolerance ratio {err:.3f})", flush=True)
  if not ok:
    FAILED.append(name)


def one_device_mesh():
  return make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1}), jax.devices()[:1])


def moe_layer(ragged: str) -> None:
  print("[1] MoE layer, 1-device mesh: local dropless vs forced exchange", flush=True)
  N, E, X, I, K = 256, 64, 8, 96, 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(N, E)), jnp.float32)
  logits = rng.normal(size=(N, X))
  ids = jnp.asarray(np.argsort(-logits, axis=1)[:, :K], jnp.int32)
  w = jnp.asarray(rng.uniform(0.1, 1.0, size=(N, K)), jnp.float32)
  valid = jnp.asarray(np.arange(N) < N - 17)  # some padding tokens
  gate_up = jnp.asarray(rng.normal(size=(X, E, 2, I)) * 0.1, jnp.float32)
  down = jnp.asarray(rng.normal(size=(X, I, E)) * 0.1, jnp.float32)
  mesh = one_device_mesh()
  for impl in ("auto", "xla"):
    def loss(x, w, gate_up, down, exchange):
      out, load, _ = moe.routed_experts(x, ids, w, valid, gate_up, down, act=jax.nn.silu, mode="dropless",
                                        capacity_factor=1.0, impl=impl, exchange=exchange)
      return jnp.sum(out * jnp.cos(out)), (out, load)

    results = {}
    with mesh_context(mesh):
      for exchange in ("auto", "padded", ragged):  # auto on one device: no shard_map, no exchange
        fn = jax.jit(jax.value_and_grad(lambda *a, e=exchange: loss(*a, e), argnums=(0, 1, 2, 3), has_aux=True))
        t0 = time.perf_counter()
        (_, (out, load)), grads = fn(x, w, gate_up, down)
        jax.block_until_ready(grads)
        results[exchange] = (out, load, grads)
        print(f"  gmm impl {impl!r} ({kernels.resolve('gmm', impl)[0]}), exchange {exchange}: "
              f"{time.perf_counter() - t0:.1f}s incl. compile", flush=True)
    ref_out, ref_load, ref_grads = results["auto"]
    for exchange in ("padded", ragged):
      out, load, grads = results[exchange]
      check(f"{impl}/{exchange} forward", out, ref_out, 1e-5)
      check(f"{impl}/{exchange} load", load, ref_load, 0, 0.5)
      for name, g, r in zip(("d x", "d weights", "d gate_up", "d down"), grads, ref_grads):
        check(f"{impl}/{exchange} {name}", g, r, 1e-5)


def attention() -> None:
  print("[2] sharded attention (shard_map around the kernel) vs kernels.attention", flush=True)
  B, T, H, KVH, D = 2, 256, 4, 2, 64
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, h, D)), jnp.float32) for h in (H, KVH, KVH))
  seg = jnp.asarray([[1] * 100 + [2] * 156, [1] * 256], jnp.int32)  # packed documents
  mesh = one_device_mesh()
  for impl in ("auto", "xla"):
    def f(q, k, v, wrapped):
      fn = sequence.sharded_attention if wrapped else kernels.attention
      kw = {"mesh": mesh} if wrapped else {}
      out = fn(q, k, v, q_segment_ids=seg, causal=True, impl=impl, **kw)
      return jnp.sum(out * jnp.sin(out)), out

    with mesh_context(mesh):
      got = jax.jit(jax.value_and_grad(lambda *a: f(*a, True), argnums=(0, 1, 2), has_aux=True))(q, k, v)
      want = jax.jit(jax.value_and_grad(lambda *a: f(*a, False), argnums=(0, 1, 2), has_aux=True))(q, k, v)
    name = f"{impl} ({kernels.resolve('attention', impl)[0]})"
    check(f"attention {name} forward", got[0][1], want[0][1], 1e-5)
    for n, g, r in zip(("d q", "d k", "d v"), got[1], want[1]):
      check(f"attention {name} {n}", g, r, 1e-5)


def model(ragged: str) -> None:
  print("[3] tiny MoE model, 3 train steps on one GPU (gmm/attention impl auto)", flush=True)
  from tests.helpers import train_curve
  kw = dict(steps=3, devices=1, model=dict(gmm_impl="auto", attention_impl="auto"))
  curves = {}
  for exchange in ("padded", ragged):
    t0 = time.perf_counter()
    curves[exchange] = train_curve({}, expert_exchange=exchange, **kw)
    print(f"  {exchange}: loss {curves[exchange]['loss']} ({time.perf_counter() - t0:.1f}s)", flush=True)
  check(f"model {ragged} vs padded: loss", curves[ragged]["loss"], curves["padded"]["loss"], 1e-5)
  check(f"model {ragged} vs padded: grad_norm", curves[ragged]["grad_norm"], curves["padded"]["grad_norm"], 1e-5)


def main() -> int:
  print("jax", jax.__version__, jax.devices(), "backend", jax.default_backend(), flush=True)
  ragged = "ragged_emulated" if "--cpu-dry-run" in sys.argv else "ragged"
  if ragged == "ragged" and not moe.ragged_supported():
    print(f"ragged_all_to_all is not implemented on {jax.default_backend()!r}; this check needs a GPU")
    return 1
  for part, args in ((moe_layer, (ragged,)), (attention, ()), (model, (ragged,))):
    try:
      part(*args)
    except Exception as e:  # noqa: BLE001 - report every part
      import traceback
      traceback.print_exc()
      FAILED.append(f"{part.__name__}: {type(e).__name__}: {e}"[:300])
  print("FAILED: " + "; ".join(FAILED) if FAILED else "all expert-exchange checks passed", flush=True)
  return 1 if FAILED else 0


if __name__ == "__main__":
  sys.exit(main())
