"""Vision-language models end to end on real files: configs/qwen3_vl_tiny.py trains through the
`jaxtrain train` command on the synthetic JSONL set (PNG images, mp4 videos) through the
multimodal data pipeline, and export-hf writes a directory transformers loads as Qwen3-VL-MoE
with the same logits on an image; an InternVL run (configs/internvl_tiny.py, same data through
the InternVL processor) started from a Hugging Face directory (`model.init_from`) exports with
the processor files of that directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.models import hf_vlm as H
from tests.helpers import REPO

import jaxtrain
from jaxtrain.converters import to_hf
from jaxtrain.models.config import ModelConfig
from tests.converters.conftest import randomize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHORT = ["--config.train.steps=2", "--config.train.global_batch=2",
         "--config.train.log_every=1", "--config.train.warmup_steps=1", "--config.eval.batches=1",
         "--config.sample.enabled=false", "--config.train.progress=false", "--config.checkpoint.every=0"]


def image_inputs(cfg, side: int = 32) -> dict:
  """One 32 x 32 image (Qwen3-VL processor layout) between text tokens, as the processor returns."""
  v = cfg.vision
  grid = side // v.patch_size
  tokens = grid * grid // v.spatial_merge_size ** 2
  rng = np.random.default_rng(0)
  ids = np.concatenate([rng.integers(1, 200, 5), [v.image_token_id] * tokens, rng.integers(1, 200, 6)])[None]
  return {"input_ids": ids, "attention_mask": np.ones_like(ids),
          "mm_token_type_ids": (ids == v.image_token_id).astype(np.int64),
          "pixel_values": rng.normal(size=(grid * grid, v.patch_dim)).astype(np.float32),
          "image_grid_thw": np.array([[1, grid, grid]])}


@pytest.mark.slow
def test_qwen3_vl_tiny_trains_and_exports_through_the_cli(tmp_path):
  workdir, out = str(tmp_path / "run"), str(tmp_path / "hf")
  # the `jaxtrain` console script (next to the venv's python), as a user runs it; rows of one
  # image (256 patches) keep the test small
  cli = os.path.join(os.path.dirname(sys.executable), "jaxtrain")
  proc = subprocess.run([cli, "train", "--config", "configs/qwen3_vl_tiny.py", f"--config.workdir={workdir}", *SHORT,
                         "--config.data.seq_len=128", "--config.data.vision.max_patches=256",
                         "--config.model.vision.row_capacity=256"], capture_output=True, text=True, timeout=600,
                        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "images" in proc.stdout + proc.stderr  # the pipeline's vision counters: pictures went through
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in records
                                                                        if "loss" in r)
  jaxtrain.converters.export_hf(workdir, out)  # what `python -m jaxtrain.converters export-hf` runs
  hf = transformers.AutoModelForImageTextToText.from_pretrained(out, attn_implementation="eager").eval()
  assert type(hf).__name__ == "Qwen3VLMoeForConditionalGeneration"
  model = jaxtrain.from_pretrained(workdir)
  inputs = image_inputs(model.cfg)
  np.testing.assert_allclose(np.asarray(model(**inputs).logits), H.hf_logits(hf, inputs), atol=1e-4)


@pytest.mark.slow
def test_internvl_from_hf_directory_exports_with_its_processor_files(tmp_path):
  hf_dir, workdir, out = str(tmp_path / "hf"), str(tmp_path / "run"), str(tmp_path / "out")
  # A transformers InternVL with configs/internvl_tiny.py's architecture and random weights.
  tiny = ModelConfig.from_config(jaxtrain.load_config("configs/internvl_tiny.py").model)
  hf_model = transformers.AutoModelForImageTextToText.from_config(
      transformers.AutoConfig.for_model(**to_hf(tiny)), attn_implementation="eager")
  randomize(hf_model, 3)
  hf_model.save_pretrained(hf_dir)
  for name in ("preprocessor_config.json", "processor_config.json", "chat_template.jinja"):
    with open(os.path.join(hf_dir, name), "w") as f:
      f.write("{}" if name.endswith(".json") else "{{ messages }}")
  config = jaxtrain.load_config("configs/internvl_tiny.py", overrides=[
      f"--config.workdir={workdir}", f"--config.model.init_from={hf_dir}", "--config.model.freeze=('vision',)",
      *SHORT, "--config.sample.enabled=true", "--config.sample.max_new_tokens=4"])
  summary = jaxtrain.Trainer(config).fit()
  assert summary["steps"] == 2 and np.isfinite(summary["eval_loss"])
  assert summary["sample"].startswith(config.sample.prompt)  # text-only generation with the KV cache
  jaxtrain.converters.export_hf(workdir, out)
  for name in ("preprocessor_config.json", "processor_config.json", "chat_template.jinja"):
    assert os.path.isfile(os.path.join(out, name)), name
  hf = transformers.AutoModelForImageTextToText.from_pretrained(out, attn_implementation="eager").eval()
  assert type(hf).__name__ == "InternVLForConditionalGeneration"
  # the vision tower was frozen: bit-identical to the starting point's
  from jaxtrain.converters.safetensors_io import WeightDir
  before, after = WeightDir(hf_dir), WeightDir(out)
  tower = [k for k in before.infos if k.startswith("vision_tower.")]
  assert tower and all(before.read(k).tobytes() == after.read(k).tobytes() for k in tower)
  assert not all(before.read(k).tobytes() == after.read(k).tobytes() for k in before.infos
                 if k.startswith("language_model."))
  image = config.model.vision.image_token_id
  inputs = H.intern_case("image", tokens_per_tile=256, image_size=448)
  ids = inputs["input_ids"]
  placeholders = ids == H.IVL_IMAGE
  ids[ids == image] = 100  # text ids of the case that are this tokenizer's placeholder id
  ids[placeholders] = image
  inputs["mm_token_type_ids"] = (inputs["input_ids"] == image).astype(np.int64)
  real = inputs["attention_mask"].astype(bool)
  ours = np.asarray(jaxtrain.from_pretrained(workdir)(**inputs).logits)
  assert np.abs(ours - H.hf_logits(hf, inputs))[real].max() <= 1e-4
