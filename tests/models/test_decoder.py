import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtrain.generate.sampler import generate
from jaxtrain.models.config import LayerKind
from jaxtrain.models.decoder import Decoder
from tests.helpers import tiny_moe


@nnx.jit
def _logits(model, ids, kw):
  return model(ids, **kw).logits


def _forward(model, ids, **kw):
  return np.asarray(_logits(model, jnp.asarray(ids), {k: jnp.asarray(v) for k, v in kw.items()}))


@pytest.mark.parametrize("changes", [{}, {"sliding_window": 3, "layer_types": ("sliding_attention", "full_attention")},
                                     {"attention_sinks": True, "attention_bias": True}])
def test_causality(changes):
  model = Decoder(tiny_moe(**changes), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 64, (2, 16))
  base = _forward(model, ids)
  t = 9
  changed = ids.copy()
  changed[:, t + 1:] = rng.integers(0, 64, (2, 16 - t - 1))
  out = _forward(model, changed)
  np.testing.assert_array_equal(out[:, :t + 1], base[:, :t + 1])
  assert np.abs(out[:, t + 1:] - base[:, t + 1:]).max() > 1e-4  # later positions do see the change


def test_packing_isolation():
  """A document's logits are identical whether packed beside others or alone."""
  model = Decoder(tiny_moe(), rngs=nnx.Rngs(1))
  rng = np.random.default_rng(1)
  doc_a, doc_b, doc_c = rng.integers(0, 64, 5), rng.integers(0, 64, 7), rng.integers(0, 64, 4)
  packed = np.concatenate([doc_a, doc_b, doc_c, np.zeros(4, int)])[None]
  seg = np.array([[1] * 5 + [2] * 7 + [3] * 4 + [0] * 4])
  pos = np.array([list(range(5)) + list(range(7)) + list(range(4)) + [0] * 4])
  out = _forward(model, packed, segment_ids=seg, positions=pos)
  alone_b = _forward(model, doc_b[None])
  alone_c = _forward(model, doc_c[None])
  np.testing.assert_allclose(out[0, 5:12], alone_b[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[0, 12:16], alone_c[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_decoding_matches_full_forward():
  cfg = tiny_moe(num_layers=4, sliding_window=4, layer_types=("sliding_attention", "full_attention") * 2)
  model = Decoder(cfg, rngs=nnx.Rngs(2))
  prompt = np.array([[3, 1, 4, 1, 5, 9]])
  out = np.asarray(generate(model, prompt, max_new_tokens=8, temperature=0.0))
  logits = _forward(model, out)
  greedy = logits[0, prompt.shape[1] - 1:-1].argmax(-1)
  np.testing.assert_array_equal(out[0, prompt.shape[1]:], greedy)


def test_stages_scan_periodic_patterns_and_runs():
  dense, moe = LayerKind(False, 0), LayerKind(True, 0)
  assert tiny_moe(num_layers=4).stages() == (((moe,), 4),)
  assert tiny_moe(num_layers=4, decoder_sparse_step=2).stages() == (((dense, moe), 2),)
  assert tiny_moe(num_layers=5, first_k_dense=2).stages() == (((dense,), 2), ((moe,), 3))
  cfg = tiny_moe(num_layers=5, mlp_only_layers=(3,))
  assert cfg.stages() == (((moe,), 3), ((dense,), 1), ((moe,), 1))
  assert [cfg.layer_location(i) for i in range(5)] == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 0), (2, 0, 0)]


def test_parameters_carry_logical_axes_and_a_layer_axis():
  from jaxtrain.parallel.rules import param_logical_axes
  model = Decoder(tiny_moe(num_layers=3), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  axes = {jax.tree_util.keystr(p): param_logical_axes(v) for p, v in
          jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))}
  assert all(a for a in axes.values())
  gate_up = next(a for k, a in axes.items() if "moe" in k and "gate_up" in k)
  assert gate_up == ("layers", "expert", "embed", None, "moe_mlp")
  assert next(a for k, a in axes.items() if k.endswith("['embed']")) == ("vocab", "embed")


def test_remat_policies_give_identical_gradients():
  ids = jnp.asarray(np.random.default_rng(3).integers(0, 64, (2, 12)))
  grads = {}
  for remat in ("none", "full", "save_dots", "save_attention_out"):
    model = Decoder(tiny_moe(remat=remat), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(ids).logits ** 2)
    grads[remat] = jax.tree.leaves(jax.jit(jax.grad(loss))(state))
  for remat, g in grads.items():
    for a, b in zip(g, grads["none"]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=remat)


def test_sampler_never_draws_ids_past_the_tokenizer_vocabulary():
  model = Decoder(tiny_moe(), rngs=nnx.Rngs(4))
  graphdef, state = nnx.split(model)
  # Make the padded rows of the LM head the most likely tokens.
  state["lm_head"].set_value(state["lm_head"].get_value().at[:, 40:].add(50.0))
  model = nnx.merge(graphdef, state)
  for temperature in (0.0, 1.0):
    out = np.asarray(generate(model, np.array([[1, 2, 3]]), max_new_tokens=6, temperature=temperature, vocab_limit=40))
    assert out[0, 3:].max() < 40
