"""Shared helpers: tiny `transformers` models built locally from configs with random weights
(nothing is downloaded), saved with `save_pretrained`, and the jaxtrain side of a comparison."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 101

# name -> (model_type, transformers config kwargs). Sizes stay tiny; every config exercises a
# different combination of the fields that change numerics.
CONFIGS = {
    "qwen3-tied-gqa4": ("qwen3", dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        head_dim=16, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6)),
    "qwen3-bias-sliding-yarn": ("qwen3", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, attention_bias=True, use_sliding_window=True, sliding_window=6, max_window_layers=1,
        rope_parameters={"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                         "original_max_position_embeddings": 32}, max_position_embeddings=128, rms_norm_eps=1e-5)),
    "qwen3_moe-interleaved-dense": ("qwen3_moe", dict(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=2,
        mlp_only_layers=[3], norm_topk_prob=False, rope_theta=1e6)),
    "qwen3_moe-tied-linear-sliding": ("qwen3_moe", dict(
        hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, num_experts=4, num_experts_per_tok=3, norm_topk_prob=True, tie_word_embeddings=True,
        rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=10000.0, use_sliding_window=True,
        sliding_window=5)),
    "llama-llama3-gqa2-headdim": ("llama", dict(
        hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=24, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16},
        max_position_embeddings=256, rms_norm_eps=1e-5)),
    "llama-yarn-tied-bias-mha": ("llama", dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        attention_bias=True, tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=64,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0, "beta_slow": 2.0,
                      "original_max_position_embeddings": 32})),
    "mixtral-gqa4-sliding": ("mixtral", dict(
        hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=7, rope_theta=1e6)),
    "mixtral-tied-top1": ("mixtral", dict(
        hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        num_local_experts=3, num_experts_per_tok=1, tie_word_embeddings=True)),
    "qwen2_moe-shared-experts": ("qwen2_moe", dict(
        hidden_size=32, intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=40,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        mlp_only_layers=[0], norm_topk_prob=False)),
}


def hf_config(model_type: str, **kwargs):
  kwargs.setdefault("vocab_size", VOCAB)
  kwargs.setdefault("max_position_embeddings", 128)
  return transformers.AutoConfig.for_model(model_type, **kwargs)


def randomize(model, seed: int) -> None:
  """Random values for every tensor, norms and biases included (their init is ones/zeros, which
  would hide a wrong mapping); router weights large enough that top-k choices are clear-cut."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif ".gate.weight" in name or "shared_expert_gate" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def build_hf(model_type: str, directory: str, seed: int = 0, **kwargs):
  """A random transformers model saved to `directory`; returns the (eval mode, fp32) model."""
  cfg = hf_config(model_type, **kwargs)
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
  randomize(model, seed)
  if cfg.tie_word_embeddings:
    model.tie_weights()
  model.save_pretrained(directory)
  return model


@functools.lru_cache(maxsize=None)
def _tokens(batch: int, length: int, seed: int, vocab: int):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def tokens(batch: int = 2, length: int = 20, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
  return _tokens(batch, length, seed, vocab).copy()


def hf_logits_and_loss(model, toks: np.ndarray):
  with torch.no_grad():
    ids = torch.tensor(toks, dtype=torch.long)
    out = model(ids, labels=ids)
  return out.logits.numpy()[:, :-1], float(out.loss)


def batch_for(toks: np.ndarray) -> dict:
  """The training batch (data-pipeline contract) that predicts toks[:, 1:] from toks[:, :-1]."""
  inputs, targets = toks[:, :-1], toks[:, 1:]
  B, T = inputs.shape
  return {"input_ids": inputs, "target_ids": targets, "loss_mask": np.ones((B, T), np.int32),
          "segment_ids": np.ones((B, T), np.int32), "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()}


def jax_logits_and_loss(model, toks: np.ndarray):
  """jaxtrain logits and the training loss on the batch predicting toks[:, 1:], computed the way
  the train step does (`Decoder.hidden_states` -> chunked `token_losses` over the loss mask,
  divided by the number of loss tokens) in one compiled forward pass."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtrain.train.loss import token_losses

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(params, rest, batch):
    m = nnx.merge(graphdef, params, rest)
    h, _, _ = m.hidden_states(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
    losses = token_losses(h, m.head_weight(h.dtype), batch["target_ids"], vocab_chunk=32)
    mask = batch["loss_mask"].astype(jnp.float32)
    return m.logits(h), jnp.sum(losses * mask) / jnp.sum(mask)

  logits, loss = run(params, rest, batch_for(toks))
  return np.asarray(logits), float(loss)


def assert_logits_and_loss_match(name: str, model, hf_model, toks: np.ndarray) -> None:
  """fp32 logits within 1e-4 and the loss within 1e-5 (relative) of transformers'; prints the
  measured errors (`pytest -s`: experiments/RESULTS.md quotes them)."""
  ref_logits, ref_loss = hf_logits_and_loss(hf_model, toks)
  logits, loss = jax_logits_and_loss(model, toks)
  err = float(np.abs(logits - ref_logits).max())
  print(f"PARITY {name}: max|logits diff|={err:.3g} (max|logit|={np.abs(ref_logits).max():.3g}), "
        f"loss jaxtrain={loss:.7f} transformers={ref_loss:.7f} diff={abs(loss - ref_loss):.3g}")
  assert err <= 1e-4, name
  assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss)), name


def assert_export_is_exact_and_reloads(hf_dir: str, exported_dir: str, hf_model,
                                       auto_class: str = "AutoModelForCausalLM") -> None:
  """Every tensor of the export is bit-identical to the original HF checkpoint, and transformers
  loads the export (through `auto_class`) with no missing/unexpected/mismatched keys and gives
  the same logits."""
  import transformers

  from jaxtrain.converters.safetensors_io import WeightDir
  original, exported = WeightDir(hf_dir), WeightDir(exported_dir)
  assert sorted(original.infos) == sorted(exported.infos)
  for key in original.infos:
    assert exported.read(key).tobytes() == original.read(key).tobytes(), key
  reloaded, info = getattr(transformers, auto_class).from_pretrained(exported_dir, output_loading_info=True,
                                                                    attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  toks = tokens(2, 13, seed=4)
  np.testing.assert_array_equal(hf_logits_and_loss(reloaded.eval(), toks)[0], hf_logits_and_loss(hf_model, toks)[0])


@pytest.fixture
def hf_dir(tmp_path):
  return str(tmp_path / "hf")


def files_in(directory: str) -> list[str]:
  return sorted(os.listdir(directory))
