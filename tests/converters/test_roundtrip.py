"""import-hf -> export-hf is bit-exact, exports load in transformers with no missing or
unexpected keys, and a run trained from HF weights exports to a model whose transformers
logits equal jaxtrain's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from tests.converters.conftest import CONFIGS, VOCAB, build_hf, hf_logits_and_loss, jax_logits_and_loss, tokens

import jaxtrain
from jaxtrain.converters import export_hf, import_hf
from jaxtrain.converters.safetensors_io import WeightDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_all(directory: str) -> dict[str, np.ndarray]:
  w = WeightDir(directory)
  return {k: w.read(k) for k in w.infos}


def cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "jaxtrain.converters", *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=300)


def assert_loads_cleanly(directory: str):
  import transformers
  model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True,
                                                                  attn_implementation="eager")
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  return model.eval()


@pytest.mark.parametrize("name", ["qwen3_moe-interleaved-dense", "mixtral-tied-top1", "qwen2_moe-shared-experts",
                                  "llama-yarn-tied-bias-mha"])
def test_import_export_is_bit_exact(name, tmp_path):
  model_type, kwargs = CONFIGS[name]
  hf_dir, ckpt, out = str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(tmp_path / "out")
  build_hf(model_type, hf_dir, seed=11, **kwargs)
  with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"model_max_length": 128}, f)
  with open(os.path.join(hf_dir, "chat_template.jinja"), "w") as f:
    f.write("{{ messages }}")
  import_hf(hf_dir, ckpt)
  export_hf(ckpt, out, max_shard_size="40KB")
  original, exported = read_all(hf_dir), read_all(out)
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype == np.float32, key
    assert exported[key].tobytes() == value.tobytes(), key
  files = os.listdir(out)
  shards = sorted(f for f in files if f.endswith(".safetensors"))
  assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert set(index["weight_map"]) == set(original) and set(index["weight_map"].values()) == set(shards)
  for name_ in ("tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    assert name_ in files, name_
  assert_loads_cleanly(out)


def test_cli_bfloat16_export_and_progress(tmp_path):
  model_type, kwargs = CONFIGS["qwen3-tied-gqa4"]
  hf_dir, ckpt, out = str(tmp_path / "hf"), str(tmp_path / "ckpt"), str(tmp_path / "out")
  build_hf(model_type, hf_dir, seed=2, **kwargs)
  r = cli("import-hf", "--hf", hf_dir, "--out", ckpt)
  assert r.returncode == 0, r.stderr
  assert "tensor" in r.stderr  # the progress bar
  r = cli("export-hf", "--ckpt", ckpt, "--out", out, "--dtype", "bfloat16")
  assert r.returncode == 0, r.stderr
  assert "tensor" in r.stderr
  original, exported = read_all(hf_dir), read_all(out)
  for key, value in original.items():
    assert exported[key].dtype == ml_dtypes.bfloat16
    assert exported[key].tobytes() == value.astype(ml_dtypes.bfloat16).tobytes(), key
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"
  assert_loads_cleanly(out)
  # An existing export is never overwritten silently.
  r = cli("export-hf", "--ckpt", ckpt, "--out", out)
  assert r.returncode != 0 and "--force" in r.stderr and out in r.stderr
  export_hf(ckpt, out, force=True)
  assert read_all(out)["model.norm.weight"].dtype == np.float32


def test_safetensors_path_never_imports_torch(tmp_path):
  model_type, kwargs = CONFIGS["llama-llama3-gqa2-headdim"]
  hf_dir = str(tmp_path / "hf")
  build_hf(model_type, hf_dir, seed=4, **kwargs)
  script = (
      "import sys, jaxtrain\n"
      "from jaxtrain.converters import import_hf, export_hf, from_pretrained\n"
      f"import_hf({hf_dir!r}, {str(tmp_path / 'ck')!r})\n"
      f"export_hf({str(tmp_path / 'ck')!r}, {str(tmp_path / 'out')!r})\n"
      f"from_pretrained({hf_dir!r})\n"
      "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n")
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr
  assert "TORCH False False" in r.stdout


def test_export_of_a_model_without_hf_origin(tmp_path):
  """A randomly initialised jaxtrain model (config.json generated from our model config, dense
  first layer, tied embeddings) loads in transformers with logits equal to ours."""
  from flax import nnx

  from jaxtrain.converters import save_hf
  import jax.numpy as jnp

  from jaxtrain.models.config import ModelConfig
  from jaxtrain.models import factory
  cfg = ModelConfig(arch="qwen3_moe", vocab_size=VOCAB, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                    head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                    first_k_dense=1, tie_word_embeddings=True, initializer_range=0.1, rope_theta=10000.0)
  graphdef, abstract, rest = factory.abstract_model(cfg)
  rng = np.random.default_rng(3)  # (random numpy values: jitted random init is slow to compile on CPU)
  params = nnx.from_flat_state([
      (p, v.replace(jnp.asarray((1.0 if p[-1] == "scale" else 0.0) + 0.1 * rng.standard_normal(v.get_value().shape),
                                jnp.float32)))
      for p, v in nnx.to_flat_state(abstract)])
  model = nnx.merge(graphdef, params, rest)
  out = str(tmp_path / "out")
  save_hf(model, cfg, out)
  hf = assert_loads_cleanly(out)
  assert hf.config.mlp_only_layers == [0]
  toks = tokens(2, 14, seed=8)
  ref_logits, ref_loss = hf_logits_and_loss(hf, toks)
  logits, loss = jax_logits_and_loss(model, toks)
  assert np.abs(logits - ref_logits).max() <= 1e-4
  assert abs(loss - ref_loss) <= 1e-5 * ref_loss


class _Recording:
  """Wraps the real data iterator and keeps the batches it hands to the trainer."""

  def __init__(self, it, seen: list):
    self._it, self._seen = it, seen

  def __getattr__(self, name):
    return getattr(self._it, name)

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    self._seen.append({k: np.array(v) for k, v in batch.items()})
    return batch

  def __enter__(self):
    self._it.__enter__()
    return self

  def __exit__(self, *exc):
    return self._it.__exit__(*exc)


def masked_ce(logits: np.ndarray, batch: dict) -> float:
  """sum over loss tokens of -log softmax(logits)[target] / number of loss tokens (float64)."""
  z = logits.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, batch["target_ids"][..., None].astype(np.int64), -1)[..., 0]
  mask = batch["loss_mask"].astype(np.float64)
  return float((nll * mask).sum() / mask.sum())


def test_train_from_hf_then_export(tmp_path, monkeypatch):
  """The Trainer with model.init_from=HF_DIR and the architecture left at defaults (resolved from
  the directory), fed by the real data pipeline: the step-0 training loss equals the loss of the
  transformers model on that very batch; after a few steps the export's transformers logits
  equal jaxtrain's logits of the trained parameters."""
  import torch

  from jaxtrain.converters import resolve_model_section
  from jaxtrain.posttrain.objective import Objective

  kwargs = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                mlp_only_layers=[0], norm_topk_prob=True)
  hf_dir, workdir, out = str(tmp_path / "hf"), str(tmp_path / "run"), str(tmp_path / "out")
  vocab = 300  # the byte tokenizer uses 261 ids
  hf = build_hf("qwen3_moe", hf_dir, seed=21, **{**kwargs, "vocab_size": vocab})
  text = tmp_path / "corpus.txt"
  rng = np.random.default_rng(0)
  text.write_text("\n".join("".join(chr(c) for c in rng.integers(97, 123, 40)) for _ in range(64)))
  seen: list = []
  real_pipeline = Objective.pipeline

  def pipeline(self, config, split, *args, **kw):
    it = real_pipeline(self, config, split, *args, **kw)
    return _Recording(it, seen) if split == "train" else it

  monkeypatch.setattr(Objective, "pipeline", pipeline)
  config = jaxtrain.load_config(base={
      "workdir": workdir,
      "model": {"init_from": hf_dir, "capacity_factor": 2.0, "aux_loss_weight": 0.0},
      "data": {"seq_len": 16, "packing": "none", "shuffle_window": 0, "prefetch": 0, "eval_fraction": 0.1,
               "sources": {"main": {"kind": "text", "path": str(text), "text_unit": "line"}}},
      "train": {"steps": 3, "global_batch": 2, "lr": 3e-2, "warmup_steps": 0, "schedule": "constant",
                "log_every": 1, "progress": False, "weight_decay": 0.0},
      "eval": {"batches": 1},
      "sample": {"enabled": False},
      "checkpoint": {"async_save": False},
  })
  resolve_model_section(config)
  assert config.model.arch == "qwen3_moe" and config.model.mlp_only_layers == (0,)
  assert config.model.capacity_factor == 2.0 and config.model.aux_loss_weight == 0.0
  trainer = jaxtrain.Trainer(config)
  trainer.fit()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [r for r in map(json.loads, f) if "loss" in r]
  first = seen[0]
  valid = first["segment_ids"] != 0
  assert (first["positions"][valid] == np.broadcast_to(np.arange(16), (2, 16))[valid]).all()  # one doc per row
  with torch.no_grad():
    hf_logits = hf(torch.tensor(first["input_ids"], dtype=torch.long)).logits.numpy()
  hf_loss = masked_ce(hf_logits, first)
  print(f"STEP0 loss jaxtrain={records[0]['loss']:.7f} transformers={hf_loss:.7f}")
  assert records[0]["step"] == 1
  assert abs(records[0]["loss"] - hf_loss) <= 1e-5 * hf_loss
  assert records[-1]["loss"] != records[0]["loss"]  # the parameters did change

  r = cli("export-hf", "--ckpt", workdir, "--out", out, "--no-progress")
  assert r.returncode == 0, r.stderr
  exported = assert_loads_cleanly(out)
  assert "generation_config.json" in os.listdir(out)  # copied from the HF directory the run started from
  key = "model.layers.1.mlp.experts.0.gate_proj.weight"
  assert not np.array_equal(read_all(out)[key], read_all(hf_dir)[key])
  check = tokens(2, 15, seed=99, vocab=vocab)
  ref_logits, _ = hf_logits_and_loss(exported, check)
  from flax import nnx
  trained = jaxtrain.from_pretrained(workdir)
  logits, _ = jax_logits_and_loss(trained, check)
  assert np.abs(logits - ref_logits).max() <= 1e-4
  # from_pretrained(workdir) holds exactly the trainer's final parameters.
  final = dict(nnx.to_flat_state(trainer.state.params))
  for path, var in nnx.to_flat_state(nnx.state(trained, nnx.Param)):
    np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(final[path].get_value()))


def test_from_pretrained_bfloat16_from_hf_and_checkpoint(tmp_path):
  """dtype=bfloat16 gives bf16 parameters equal to the fp32 weights rounded, from an HF directory
  and from a jaxtrain checkpoint alike."""
  from flax import nnx
  model_type, kwargs = CONFIGS["mixtral-tied-top1"]
  hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ck")
  build_hf(model_type, hf_dir, seed=6, **kwargs)
  import_hf(hf_dir, ckpt)
  fp32 = dict(nnx.to_flat_state(nnx.state(jaxtrain.from_pretrained(hf_dir), nnx.Param)))
  for source in (hf_dir, ckpt):
    model = jaxtrain.from_pretrained(source, dtype="bfloat16")
    assert model.cfg.dtype == model.cfg.param_dtype == "bfloat16"
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      value = np.asarray(var.get_value())
      assert value.dtype == ml_dtypes.bfloat16, path
      expected = np.asarray(fp32[path].get_value()).astype(ml_dtypes.bfloat16)
      assert value.tobytes() == expected.tobytes(), (source, path)
