"""MoE dispatcher selection (jaxtrain.parallel.moe.select): which implementation each
config / platform / layout gets, and that every implementation, chosen through the public path
(`routed_experts(..., exchange=...)` or `mesh_context(..., expert_exchange=...)`), matches the
local reference (sort + ragged_dot) in output, load and gradients, biases and padding included."""

from __future__ import annotations

import json

import jax
import pytest
from ml_collections import ConfigDict

from jaxtrain import kernels
from jaxtrain.config import ConfigError
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel.moe import (EXCHANGES, ExpertParallel, Layout, LocalBlocks, LocalSorted, PaddedAllToAll,
                                   RaggedAllToAll, current_exchange, emulated_ragged_all_to_all, exchange_context,
                                   select)
from tests.helpers import run_python

EP4 = Layout(token_axes=("fsdp", "expert"), ep_axes=("expert",), tp_axes=(), ep_size=4)
NO_EP = Layout(token_axes=("fsdp",), ep_axes=(), tp_axes=(), ep_size=1)  # tokens split, experts not
EP1 = Layout(token_axes=("expert",), ep_axes=("expert",), tp_axes=(), ep_size=1)  # a size-1 expert axis


def test_without_a_layout_the_grouped_matmul_impl_decides():
  assert jax.default_backend() == "cpu"
  assert select("auto", "blocked", None) == LocalBlocks()
  assert select("auto", "auto", None) == LocalBlocks()  # "auto" is "blocked" on CPU
  assert select("auto", "xla", None) == LocalSorted()
  assert select("padded", "xla", None) == LocalSorted()  # nothing to exchange without a layout
  assert select("ragged", "blocked", None) == LocalBlocks()


@pytest.mark.parametrize("exchange, backend, inner", [
    ("padded", "cpu", PaddedAllToAll("expert", 4)),
    ("padded", "gpu", PaddedAllToAll("expert", 4)),
    ("auto", "cpu", PaddedAllToAll("expert", 4)),
    ("auto", "gpu", RaggedAllToAll("expert", 4, jax.lax.ragged_all_to_all, True)),
    ("auto", "tpu", RaggedAllToAll("expert", 4, jax.lax.ragged_all_to_all, True)),
    ("ragged", "gpu", RaggedAllToAll("expert", 4, jax.lax.ragged_all_to_all, True)),
    ("ragged_emulated", "cpu", RaggedAllToAll("expert", 4, emulated_ragged_all_to_all, True)),
    ("ragged_emulated", "gpu", RaggedAllToAll("expert", 4, emulated_ragged_all_to_all, True)),
])
def test_split_experts_get_the_exchange_for_config_and_backend(exchange, backend, inner):
  for impl in ("xla", "blocked"):  # inside shard_map the grouped matmul never changes the exchange
    assert select(exchange, impl, EP4, backend=backend) == ExpertParallel(inner, EP4, checked=True)


def test_unsplit_experts_run_sort_and_grouped_matmul_on_each_device():
  for impl in ("xla", "blocked", "auto"):
    assert select("auto", impl, NO_EP) == ExpertParallel(LocalSorted(), NO_EP, checked=True)
  assert select("auto", "xla", EP1) == ExpertParallel(LocalSorted(), EP1, checked=True)
  # A forced exchange over a size-1 expert axis runs the exchange code (checkable on one device).
  assert select("padded", "xla", EP1) == ExpertParallel(PaddedAllToAll("expert", 1), EP1, checked=True)


def test_kernels_without_varying_axis_types_turn_the_checks_off_everywhere():
  with kernels.interpret_mode():  # "pallas" resolves to the Pallas kernel
    d = select("ragged_emulated", "pallas", EP4)
  assert d == ExpertParallel(RaggedAllToAll("expert", 4, emulated_ragged_all_to_all, False), EP4, checked=False)


def test_ragged_where_the_backend_lacks_it_is_a_clear_error():
  with pytest.raises(ValueError, match=r"ragged_all_to_all.*'cpu'.*'padded'.*'ragged_emulated'"):
    select("ragged", "xla", EP4, backend="cpu")
  with pytest.raises(ValueError, match="not one of"):
    select("fast", "xla", None)


def test_exchange_comes_from_mesh_context_and_config_accepts_every_exchange():
  mesh = mesh_lib.make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1}))
  assert current_exchange() == "auto"
  with mesh_lib.mesh_context(mesh, expert_exchange="ragged_emulated"):
    assert current_exchange() == "ragged_emulated"
  assert current_exchange() == "auto"
  with pytest.raises(ValueError, match="not one of"), exchange_context("fast"):
    pass
  config = ConfigDict({"mesh": mesh_lib.defaults(), "model": {"num_experts": 4, "num_heads": 4}})
  for exchange in EXCHANGES:
    config.mesh.expert_exchange = exchange
    mesh_lib.validate(config)
  config.mesh.expert_exchange = "fast"
  with pytest.raises(ConfigError, match="expert_exchange"):
    mesh_lib.validate(config)


SCRIPT = r"""
import json, jax, jax.numpy as jnp, numpy as np
from ml_collections import ConfigDict
from jaxtrain.models.layers import glu as make_glu
from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.parallel.moe import routed_experts

def mesh(**sizes):
  return make_mesh(ConfigDict({"data": 1, "fsdp": 1, "expert": 1, "sequence": 1, "tensor": 1, **sizes}))

def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))

rng = np.random.default_rng(0)
N, E, X, I, K = 32, 8, 4, 6, 2
args = tuple(jnp.asarray(a, jnp.float32) for a in (
    rng.normal(size=(N, E)), rng.uniform(0.2, 1.0, size=(N, K)), rng.normal(size=(X, E, 2, I)) * 0.3,
    rng.normal(size=(X, I, E)) * 0.3, rng.normal(size=(X, 2, I)), rng.normal(size=(X, E))))
ids = jnp.asarray(np.argsort(rng.normal(size=(N, X)), axis=1)[:, :K], jnp.int32)
valid = jnp.asarray(np.arange(N) % 5 != 2)
unit = make_glu("clamped_swiglu", alpha=1.7, limit=0.6)

def grad_fn(impl, exchange):
  def loss(x, w, gate_up, down, gate_up_bias, down_bias):
    y, load, dropped = routed_experts(x, ids, w, valid, gate_up, down, act=jax.nn.silu, mode="dropless",
                                      capacity_factor=1.0, impl=impl, exchange=exchange, gate_up_bias=gate_up_bias,
                                      down_bias=down_bias, glu=unit)
    return jnp.sum(jnp.sin(y)), (y, load, dropped)
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))

(_, (y0, l0, _)), g0 = grad_fn("xla", None)(*args)  # no mesh: LocalSorted, the reference
out = {}
# name: (mesh sizes or None, gmm impl, exchange argument, mesh_context exchange)
cases = {"local_blocks": (None, "blocked", None, None),
         "fsdp4_local_sorted": (dict(fsdp=4), "blocked", None, "auto"),
         "ep4_auto_is_padded": (dict(expert=4), "xla", None, "auto"),
         "ep4_padded": (dict(expert=4), "xla", "padded", "ragged_emulated"),  # the argument wins
         "ep4_ragged_emulated": (dict(expert=4), "xla", None, "ragged_emulated"),
         "ep2_tp2_ragged_emulated": (dict(expert=2, tensor=2), "xla", "ragged_emulated", None)}
for name, (sizes, impl, arg, ctx) in cases.items():
  f = grad_fn(impl, arg)
  if sizes is None:
    lowered = f.lower(*args)
    (_, (y, l, d)), g = lowered.compile()(*args)
  else:
    with mesh_context(mesh(**sizes), expert_exchange=ctx):
      lowered = f.lower(*args)
      (_, (y, l, d)), g = lowered.compile()(*args)
  text = lowered.as_text()
  out[name] = {"y": rel(y, y0), "grads": max(rel(a, b) for a, b in zip(g, g0)),
               "load_equal": bool(np.array_equal(l, l0)), "dropped": int(d),
               "all_to_all": text.count("all_to_all"), "all_gather": text.count("all_gather")}
print("RESULT " + json.dumps(out))
"""


def test_every_implementation_matches_the_local_reference():
  stdout = run_python(SCRIPT, devices=4)
  out = json.loads(next(l for l in stdout.splitlines()[::-1] if l.startswith("RESULT "))[len("RESULT "):])
  assert len(out) == 6
  for name, r in out.items():
    assert r["y"] < 1e-5 and r["grads"] < 1e-5 and r["load_equal"] and r["dropped"] == 0, (name, r)
  # The collectives show which dispatcher ran: none locally or without an expert split,
  # all_to_all for padded, all-gathers (and no all_to_all) for the emulated ragged exchange.
  for name in ("local_blocks", "fsdp4_local_sorted"):
    assert out[name]["all_to_all"] == 0 and out[name]["all_gather"] == 0, (name, out[name])
  for name in ("ep4_auto_is_padded", "ep4_padded"):
    assert out[name]["all_to_all"] >= 4 and out[name]["all_gather"] == 0, (name, out[name])
  for name in ("ep4_ragged_emulated", "ep2_tp2_ragged_emulated"):
    assert out[name]["all_to_all"] == 0 and out[name]["all_gather"] >= 8, (name, out[name])


def test_fused_blocks_compute_expert_lora_like_the_grouped_matmul_path():
  """LoRA adapters inside the fused blocked FFN (the CPU path) against sort + ragged_dot with the
  adapters as extra grouped matmuls: outputs and gradients of tokens, router weights, frozen
  weights and every adapter array."""
  import jax.numpy as jnp
  import numpy as np
  from jaxtrain.parallel.moe import ExpertFFN, ExpertLoRA, Routing
  rng = np.random.default_rng(7)
  N, K, E, I, X, r = 19, 2, 12, 10, 4, 3
  f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  x, weights, gate_up, down = f32(N, E), f32(N, K), f32(X, E, 2, I) * 0.3, f32(X, I, E) * 0.3
  adapters = tuple(f32(*shape) * 0.3 for shape in ((X, E, r), (X, r, 2, I), (X, I, r), (X, r, E)))
  cot = f32(N, E)
  ids = jnp.asarray(rng.integers(0, X - 1, (N, K)), jnp.int32)  # the last expert gets nothing
  valid = jnp.asarray(rng.random(N) > 0.2)

  def loss(dispatcher, impl):
    def f(x, weights, gate_up, down, adapters):
      ffn = ExpertFFN(gate_up, down, jax.nn.silu, impl, lora=ExpertLoRA(*adapters, scale=1.5))
      out, load = dispatcher(x, Routing(ids, weights, valid), ffn)
      return jnp.sum(out * cot), (out, load)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4), has_aux=True))

  (_, (out_b, load_b)), grads_b = loss(LocalBlocks(), "blocked")(x, weights, gate_up, down, adapters)
  (_, (out_r, load_r)), grads_r = loss(LocalSorted(), "xla")(x, weights, gate_up, down, adapters)
  np.testing.assert_allclose(out_b, out_r, rtol=1e-4, atol=1e-5 * float(jnp.abs(out_r).max()))
  np.testing.assert_array_equal(load_b, load_r)
  assert float(jnp.abs(grads_r[4][3]).max()) > 0
  for a, b in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * float(jnp.abs(b).max()))
