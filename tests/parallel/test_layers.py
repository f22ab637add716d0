"""The shard_map layers on their own, 8 simulated devices, forward and gradients against the
unsharded computation:
- expert parallel: padded and (stand-in) ragged exchange under skewed routing, where every
  token picks the same experts (the worst case the buffers are sized for: nothing may drop),
  with padding tokens, tensor-split expert hidden dims, and one forced exchange over a size-1
  expert axis;
- Ulysses attention: sequence splits of 2, 4 and 8 with fewer kv heads than the split, query
  heads split over tensor with kv heads that do not split over it, sinks, a sliding window
  and packed documents."""

from __future__ import annotations

import json

from tests.helpers import run_python
from tests.parallel.conftest import xla_flags

SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
from ml_collections import ConfigDict
from jaxtrain import kernels
from jaxtrain.parallel import moe, sequence
from jaxtrain.parallel.mesh import make_mesh, mesh_context

def mesh(**sizes):
  return make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **sizes}))

def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))

out = {}
rng = np.random.default_rng(0)
N, E, X, I, K = 64, 16, 8, 12, 2
x = jnp.asarray(rng.normal(size=(N, E)), jnp.float32)
gate_up = jnp.asarray(rng.normal(size=(X, E, 2, I)) * 0.3, jnp.float32)
down = jnp.asarray(rng.normal(size=(X, I, E)) * 0.3, jnp.float32)
w = jnp.asarray(rng.uniform(0.2, 1.0, size=(N, K)), jnp.float32)
routes = {
  "random": jnp.asarray(np.argsort(rng.normal(size=(N, X)), axis=1)[:, :K], jnp.int32),
  "skewed": jnp.broadcast_to(jnp.asarray([5, 4], jnp.int32), (N, K)),  # every token: experts 5 and 4
}
valid = jnp.asarray(np.arange(N) % 7 != 3)

def moe_loss(x, w, gate_up, down, ids, exchange):
  y, load, dropped = moe.routed_experts(x, ids, w, valid, gate_up, down, act=jax.nn.silu, mode="dropless",
                                        capacity_factor=1.0, impl="xla", exchange=exchange)
  return jnp.sum(jnp.sin(y)), (y, load, dropped)

grad = jax.value_and_grad(moe_loss, argnums=(0, 1, 2, 3), has_aux=True)
for route, ids in routes.items():
  (_, (y0, l0, _)), g0 = jax.jit(grad, static_argnums=5)(x, w, gate_up, down, ids, "auto")  # no mesh: local
  for name, sizes, exchange in [("ep8", dict(expert=8), "padded"), ("ep4_tp2", dict(expert=4, tensor=2), "padded"),
                                ("fsdp2_ep4", dict(fsdp=2, expert=4), "ragged_emulated"),
                                ("fsdp8_forced", dict(fsdp=8), "padded")]:
    if route == "random" and name != "ep4_tp2":
      continue  # random routing runs through every mesh in test_parallel's training runs
    with mesh_context(mesh(**sizes)):
      (_, (y, l, d)), g = jax.jit(grad, static_argnums=5)(x, w, gate_up, down, ids, exchange)
      text = jax.jit(grad, static_argnums=5).lower(x, w, gate_up, down, ids, exchange).as_text()
    out[f"moe/{route}/{name}"] = {"y": rel(y, y0), "grads": max(rel(a, b) for a, b in zip(g, g0)),
                                  "load_equal": bool(np.array_equal(l, l0)), "dropped": int(d),
                                  "exchanged": "all_to_all" in text or "all_gather" in text}

B, T, H, D = 2, 32, 8, 8
seg = jnp.asarray([[1] * 12 + [2] * 20, [1] * 30 + [0] * 2], jnp.int32)
for name, sizes, kvh, opts in [("sp2", dict(fsdp=2, sequence=2, expert=2), 2, {}),
                               ("sp4_kv1", dict(fsdp=2, sequence=4), 1, dict(sliding_window=5)),
                               ("sp8_kv2_sinks", dict(sequence=8), 2, dict(sinks=True)),
                               ("tp2_sp2_kv1_sinks", dict(data=2, sequence=2, tensor=2), 1, dict(sinks=True)),
                               ("tp4_kv2", dict(fsdp=2, tensor=4), 2, dict(sliding_window=9))]:
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, h, D)), jnp.float32) for h in (H, kvh, kvh))
  sinks = jnp.asarray(rng.normal(size=(H,)), jnp.float32) if opts.get("sinks") else None
  window = opts.get("sliding_window")

  def attn_loss(q, k, v, sinks, fn):
    o = fn(q, k, v, q_segment_ids=seg, causal=True, sliding_window=window, sinks=sinks, impl="xla")
    return jnp.sum(o * jnp.cos(o)), o

  args = (q, k, v, sinks)
  argnums = (0, 1, 2, 3) if sinks is not None else (0, 1, 2)
  (_, o0), g0 = jax.jit(jax.value_and_grad(lambda *a: attn_loss(*a, kernels.attention), argnums=argnums, has_aux=True))(*args)
  with mesh_context(mesh(**sizes)):
    f = jax.jit(jax.value_and_grad(lambda *a: attn_loss(*a, sequence.attention), argnums=argnums, has_aux=True))
    (_, o), g = f(*args)
    text = f.lower(*args).as_text()
  out[f"attn/{name}"] = {"y": rel(o, o0), "grads": max(rel(a, b) for a, b in zip(g, g0)),
                         "all_to_all": "all_to_all" in text}
print("RESULT " + json.dumps(out))
"""


def test_expert_parallel_and_ulysses_layers_match_unsharded():
  stdout = run_python(SCRIPT, devices=8, env={"XLA_FLAGS": xla_flags(8)})
  out = json.loads(next(l for l in stdout.splitlines()[::-1] if l.startswith("RESULT "))[len("RESULT "):])
  assert len(out) == 5 + 5
  for name, r in out.items():
    assert r["y"] < 1e-5 and r["grads"] < 1e-5, (name, r)
    if name.startswith("moe/"):
      assert r["load_equal"] and r["dropped"] == 0, (name, r)
      # (a collective over a size-1 axis is elided when traced, so "forced" shows none)
      assert r["exchanged"] or name.endswith("forced"), (name, r)
    elif "sp" in name:
      assert r["all_to_all"], (name, r)  # Ulysses exchanged sequence for heads
