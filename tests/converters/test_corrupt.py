"""Bad inputs fail loudly: each error names the file / key / field, and the CLI exits non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.converters.conftest import CONFIGS, build_hf

import jaxtrain
from jaxtrain.config import ConfigError
from jaxtrain.converters import ConversionError, load_params
from jaxtrain.converters.safetensors_io import WeightDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def small(hf_dir, name="qwen3_moe-tied-linear-sliding", **extra):
  model_type, kwargs = CONFIGS[name]
  return build_hf(model_type, hf_dir, seed=1, **{**kwargs, **extra})


def rewrite(hf_dir, change):
  """Rewrites model.safetensors after `change(dict of numpy arrays)` (via the safetensors package)."""
  from safetensors.numpy import save_file
  path = os.path.join(hf_dir, "model.safetensors")
  w = WeightDir(hf_dir)
  tensors = {k: w.read(k) for k in w.infos}
  change(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def edit_config(hf_dir, **changes):
  path = os.path.join(hf_dir, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(path, "w") as f:
    json.dump(cfg, f)


def test_truncated_safetensors(hf_dir, tmp_path):
  small(hf_dir)
  path = os.path.join(hf_dir, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(ConversionError) as e:
    jaxtrain.from_pretrained(hf_dir)
  assert "model.safetensors" in str(e.value) and "truncated" in str(e.value)
  assert "lm_head" in str(e.value) or "model." in str(e.value)  # names the tensor cut off
  # The CLI reports it with a non-zero exit status.
  r = subprocess.run([sys.executable, "-m", "jaxtrain.converters", "import-hf", "--hf", hf_dir, "--out",
                      str(tmp_path / "ck"), "--no-progress"], capture_output=True, text=True, cwd=REPO,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert r.returncode == 1
  assert "model.safetensors" in r.stderr and "truncated" in r.stderr


def test_truncated_header(hf_dir):
  small(hf_dir)
  path = os.path.join(hf_dir, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(50)
  with pytest.raises(ConversionError, match="model.safetensors"):
    jaxtrain.from_pretrained(hf_dir)


def test_missing_shard(hf_dir):
  model = small(hf_dir)
  os.remove(os.path.join(hf_dir, "model.safetensors"))
  model.save_pretrained(hf_dir, max_shard_size="20KB")
  with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
    shards = sorted(set(json.load(f)["weight_map"].values()))
  assert len(shards) > 2
  os.remove(os.path.join(hf_dir, shards[1]))
  with pytest.raises(ConversionError) as e:
    jaxtrain.from_pretrained(hf_dir)
  assert shards[1] in str(e.value) and "missing" in str(e.value)


def test_wrong_shape_missing_and_unexpected_tensors(hf_dir):
  small(hf_dir)

  def change(t):
    t["model.layers.1.self_attn.k_proj.weight"] = t["model.layers.1.self_attn.k_proj.weight"][:, :-1].copy()
    del t["model.layers.0.mlp.experts.2.up_proj.weight"]
    t["model.layers.0.mlp.experts.9.up_proj.weight"] = np.zeros((24, 32), np.float32)

  rewrite(hf_dir, change)
  with pytest.raises(ConversionError) as e:
    jaxtrain.from_pretrained(hf_dir)
  msg = str(e.value)
  assert "model.layers.1.self_attn.k_proj.weight" in msg and "[8, 31]" in msg and "[8, 32]" in msg
  assert "missing tensor model.layers.0.mlp.experts.2.up_proj.weight" in msg
  assert "unexpected tensor model.layers.0.mlp.experts.9.up_proj.weight" in msg


def test_unsupported_model_type(hf_dir, tmp_path):
  small(hf_dir)
  edit_config(hf_dir, model_type="gpt2")
  with pytest.raises(ConversionError) as e:
    jaxtrain.from_pretrained(hf_dir)
  assert "gpt2" in str(e.value) and "config.json" in str(e.value)
  r = subprocess.run([sys.executable, "-m", "jaxtrain.converters", "import-hf", "--hf", hf_dir, "--out",
                      str(tmp_path / "ck")], capture_output=True, text=True, cwd=REPO,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert r.returncode == 1 and "gpt2" in r.stderr


@pytest.mark.parametrize("field,value,named", [
    ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}, "rope_type='dynamic'"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ("rope_scaling", {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, "short_factor"),
    ("attention_dropout", 0.1, "attention_dropout"),
    ("mlp_bias", True, "mlp_bias"),
    ("hidden_act", "gelu_fast", "hidden_act"),
    ("quantization_config", {"quant_method": "fp8"}, "quantization_config"),
])
def test_unsupported_numerics_fields_are_errors(field, value, named, hf_dir):
  small(hf_dir, name="llama-yarn-tied-bias-mha")
  edit_config(hf_dir, **{field: value})
  with pytest.raises(ConversionError) as e:
    jaxtrain.from_pretrained(hf_dir)
  assert named in str(e.value) and "config.json" in str(e.value)


def test_mixtral_router_jitter_is_an_error(hf_dir):
  small(hf_dir, name="mixtral-tied-top1")
  edit_config(hf_dir, router_jitter_noise=0.01)
  with pytest.raises(ConversionError, match="router_jitter_noise"):
    jaxtrain.from_pretrained(hf_dir)


def test_run_config_mismatch_names_fields(hf_dir):
  small(hf_dir)
  from jaxtrain.converters import model_config_from_hf
  from jaxtrain.models.config import ModelConfig
  section = model_config_from_hf(hf_dir)
  good = ModelConfig.from_config(section)
  bad = good.replace(rms_norm_eps=1e-5, num_kv_heads=2, norm_topk_prob=False)
  with pytest.raises(ConfigError) as e:
    load_params(hf_dir, bad)
  msg = str(e.value)
  assert "model.rms_norm_eps" in msg and "model.num_kv_heads" in msg and "model.norm_topk_prob" in msg
  assert "model.hidden_size" not in msg
  # Fields that cannot change the numerics do not count (MoE fields of a dense model, unused rope fields).
  assert not any("max_position" in line for line in msg.splitlines())
  load_params(hf_dir, good.replace(capacity_factor=3.0, remat="full", dtype="bfloat16"))


def test_pytorch_bin_checkpoints(hf_dir, tmp_path, monkeypatch):
  import torch
  model = small(hf_dir)
  reference = jaxtrain.from_pretrained(hf_dir)
  bin_dir = str(tmp_path / "bin")
  model.save_pretrained(bin_dir)
  os.remove(os.path.join(bin_dir, "model.safetensors"))
  # transformers 5 keeps fused experts in memory; on disk (and in our tables) they are per expert.
  from safetensors.numpy import load_file
  on_disk = load_file(os.path.join(hf_dir, "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in on_disk.items()}, os.path.join(bin_dir, "pytorch_model.bin"))
  loaded = jaxtrain.from_pretrained(bin_dir)
  from flax import nnx
  ref = dict(nnx.to_flat_state(nnx.state(reference, nnx.Param)))
  for path, var in nnx.to_flat_state(nnx.state(loaded, nnx.Param)):
    np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(ref[path].get_value()))
  # Without torch, a clear error instead of an ImportError deep inside.
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ConversionError, match="needs torch"):
    jaxtrain.from_pretrained(bin_dir)


def test_export_refuses_to_overwrite(hf_dir, tmp_path):
  from jaxtrain.converters import export_hf, import_hf
  small(hf_dir)
  ckpt, out = str(tmp_path / "ck"), str(tmp_path / "out")
  import_hf(hf_dir, ckpt)
  os.makedirs(out)
  with open(os.path.join(out, "notes.txt"), "w") as f:
    f.write("keep me")
  with pytest.raises(ConversionError, match="not empty"):
    export_hf(ckpt, out)
  with pytest.raises(ConversionError, match="not empty"):
    import_hf(hf_dir, ckpt)
  export_hf(ckpt, out, force=True)
  with open(os.path.join(out, "notes.txt")) as f:
    assert f.read() == "keep me"
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))


def test_missing_paths(tmp_path):
  with pytest.raises(ConversionError, match="no such"):
    jaxtrain.from_pretrained(str(tmp_path / "nope"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ConversionError, match="empty"):
    jaxtrain.from_pretrained(str(tmp_path / "empty"))
