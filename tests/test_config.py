import os

import pytest

from jaxtrain.config import ConfigError, parse_override
from jaxtrain.train.run_config import load_config


def _write(tmp_path, body: str) -> str:
  path = os.path.join(tmp_path, "cfg.py")
  with open(path, "w") as f:
    f.write(body)
  return path


def test_defaults_plus_file_plus_overrides(tmp_path):
  path = _write(tmp_path, "def get_config():\n  return {'train': {'steps': 7}, 'model': {'num_layers': 3}}\n")
  cfg = load_config(path, ["--config.train.lr=0.01", "--config.model.qk_norm=false", "--config.data.seq_len=64"])
  assert cfg.train.steps == 7 and cfg.model.num_layers == 3
  assert cfg.train.lr == 0.01 and cfg.model.qk_norm is False and cfg.data.seq_len == 64
  assert cfg.train.global_batch == 8  # untouched default


def test_unknown_key_in_file_names_it_and_suggests(tmp_path):
  path = _write(tmp_path, "def get_config():\n  return {'train': {'stpes': 7}}\n")
  with pytest.raises(ConfigError) as e:
    load_config(path)
  assert "train.stpes" in str(e.value) and "'steps'" in str(e.value) and path in str(e.value)


def test_unknown_override_suggests_close_match():
  with pytest.raises(ConfigError) as e:
    load_config(overrides=["--config.model.num_expert=4"])
  assert "model.num_expert" in str(e.value) and "'num_experts'" in str(e.value)


def test_wrong_type_is_an_error():
  with pytest.raises(ConfigError, match="train.steps expects int"):
    load_config(overrides=["--config.train.steps=fast"])


def test_semantic_validation_names_the_key():
  with pytest.raises(ConfigError, match="model.num_kv_heads"):
    load_config(overrides=["--config.model.num_heads=6", "--config.model.num_kv_heads=4"])
  with pytest.raises(ConfigError, match="train.micro_batches"):
    load_config(overrides=["--config.train.global_batch=6", "--config.train.micro_batches=4"])
  with pytest.raises(ConfigError, match="kernels.gmm"):
    load_config(overrides=["--config.kernels.gmm=fastest"])


def test_override_values_parse_as_literals():
  assert parse_override("--config.a.b=3") == ("a.b", 3)
  assert parse_override("--config.a=True") == ("a", True)
  assert parse_override("--config.a=(1, 2)") == ("a", (1, 2))
  assert parse_override("--config.a=hello") == ("a", "hello")
  with pytest.raises(ConfigError):
    parse_override("--config.a")


def test_config_is_locked_against_typos_after_loading():
  cfg = load_config()
  with pytest.raises(AttributeError):
    cfg.train.stepz = 3
