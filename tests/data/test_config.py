"""The `data` config section: defaults, validation naming the key, the SFT example config."""

import pathlib

import pytest

from jaxtrain.config import ConfigError
from jaxtrain.train.run_config import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_defaults_give_the_quickstart_corpus():
  config = load_config()
  assert config.data.tokenizer == "byte" and config.data.seq_len == 256
  assert list(config.data.sources) == ["main"] and config.data.sources.main.kind == "python_stdlib"


@pytest.mark.parametrize("override,key", [
    ("data.sources.main.kind=csv", "data.sources.main.kind"),
    ("data.sources.main.format=chat", "data.sources.main.format"),
    ("data.sources.main.weight=0", "data.sources.main.weight"),
    ("data.sources.extra.kind=jsonl", "data.sources.extra.path"),
    ("data.overlong=wrap", "data.overlong"),
    ("data.on_bad_record=ignore", "data.on_bad_record"),
    ("data.packing=greedy", "data.packing"),
    ("data.loss_on=user", "data.loss_on"),
    ("data.eval_fraction=1.0", "data.eval_fraction"),
    ("data.workers=-1", "data.workers"),
    ("model.vocab_size=200", "model.vocab_size"),
])
def test_validation_names_the_key(override, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    load_config(overrides=[f"--config.{override}"])


def test_unknown_source_key_is_rejected():
  with pytest.raises(ConfigError, match="data.sources.main.fromat"):
    load_config(overrides=["--config.data.sources.main.fromat=chat"])


def test_sources_given_by_a_config_replace_the_default():
  config = load_config(base={"data": {"sources": {"sft": {"kind": "jsonl", "path": "x.jsonl", "format": "chat"}}}})
  assert list(config.data.sources) == ["sft"]
  assert config.data.sources.sft.messages_field == "messages"  # entries get the template's defaults


def test_sft_example_config_builds_its_pipelines():
  from jaxtrain.data import build_pipeline, build_tokenizer
  config = load_config(str(REPO / "configs" / "sft_example.py"))
  assert config.data.sources.sft.format == "chat"
  tok = build_tokenizer(config.data)
  it = build_pipeline(config, "train", tok)
  batch = next(it)
  assert batch["input_ids"].shape == (config.train.global_batch, config.data.seq_len)
  assert 0 < batch["loss_mask"].sum() < (batch["segment_ids"] > 0).sum()
  assert it.stats()["truncated_documents"] == 0
  assert len(list(build_pipeline(config, "eval", tok))) >= 1
  it.close()


def test_config_section_import_is_cheap():
  import subprocess
  import sys
  code = ("import sys, jaxtrain.data, jaxtrain.data.config as c; c.defaults(); "
          "print(sorted(m for m in ('grain', 'jax', 'pyarrow', 'tokenizers') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
  assert out.stdout.strip() == "[]"
