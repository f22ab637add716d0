"""jaxtrain parameters -> a Hugging Face directory, and HF directory -> jaxtrain checkpoint.

`export_hf` reads the parameters (never the optimizer state) of a run's checkpoint, recovers the
model config from the config saved with it, and writes `config.json`, sharded
`model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, and, when the run
started from a Hugging Face directory, that directory's tokenizer and generation files.
Tensors are produced one at a time (slice the parameter on device, transpose on the host, cast,
write), so host memory holds one tensor beyond the parameters.

`import_hf` streams an HF directory into a jaxtrain checkpoint (`OUT/checkpoints/0`, plus the
resolved model section in `OUT/config.json`) that `model.init_from`, `from_pretrained` and
`export_hf` accept.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
from flax import nnx
from jaxtrain.converters import families, hf_config, tables
from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.load import (
  checkpoint_model_section,
  load_checkpoint_params,
  load_hf_params,
  progress_bar,
  split_variables,
)
from jaxtrain.converters.safetensors_io import numpy_dtype
from jaxtrain.converters.safetensors_write import OutTensor, parse_size, write_sharded
from jaxtrain.converters.signature import signature_diff
from ml_collections import ConfigDict

from jaxtrain import checkpoint
from jaxtrain import config as config_lib
from jaxtrain.models import config as model_config
from jaxtrain.models.config import ModelConfig

log = logging.getLogger("jaxtrain.converters")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "generation_config.json",
                   "chat_template.jinja", "chat_template.json",
                   # vision-language models' processors
                   "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")
# What an earlier export into the same directory may have left (removed under force=True).
_OUR_OUTPUTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json", "config.json")


def prepare_out_dir(out: str, force: bool, outputs=_OUR_OUTPUTS) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConversionError(f"{out}: exists and is not a directory")
  if os.path.isdir(out) and os.listdir(out):
    if not force:
      raise ConversionError(f"{out}: output directory exists and is not empty; pass --force (force=True) to "
                            f"overwrite")
    for pattern in outputs:
      for path in glob.glob(os.path.join(out, pattern)):
        if os.path.isdir(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
  os.makedirs(out, exist_ok=True)


@functools.lru_cache(maxsize=None)
def _slice_fn(sizes: tuple):
  return jax.jit(lambda a, starts: jax.lax.dynamic_slice(a, starts, sizes))


def _fetch(arr: jax.Array, index: tuple) -> np.ndarray:
  """Host copy of `arr[index]` (ints and full slices), gathered from its shards on device."""
  if not arr.is_fully_addressable:
    from jax.experimental import multihost_utils
    arr = multihost_utils.process_allgather(arr, tiled=True)
  shape = tuple(arr.shape)
  if not index:
    return np.asarray(jax.device_get(arr))
  starts, sizes = tables.update_geometry(shape, index)
  part = _slice_fn(sizes)(arr, tuple(np.int32(s) for s in starts))
  return np.asarray(jax.device_get(part)).reshape(tables.slice_shape(shape, index))


def hf_config_for(model_cfg, *, dtype: str, base: dict | None = None) -> dict:
  """The config.json to write: `base` (the config.json the run started from) when it describes
  the same numerics, else one generated from `model_cfg`; either way checked by reading it back."""
  if base is not None:
    try:
      same = (base.get("model_type") == model_cfg.arch
              and not signature_diff(model_cfg, ModelConfig.from_config(hf_config.from_hf(base))))
    except ConversionError:
      same = False
    if same:
      hf = dict(base)
      hf.pop("quantization_config", None)  # the export holds dequantized weights
      hf["dtype"] = dtype
      if "torch_dtype" in hf:
        hf["torch_dtype"] = dtype
      hf.setdefault("architectures", [families.get(hf["model_type"]).architecture])
      return hf
    log.warning("the model no longer matches the config.json it started from; writing a config generated "
                "from the model config (token ids are kept)")
  hf = hf_config.to_hf(model_cfg, dtype=dtype)
  for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
    if base is not None and key in base:
      hf[key] = base[key]
  return hf


def save_hf(params, model_cfg, out: str, *, dtype: str = "float32", base_config: dict | None = None,
            copy_files_from: str | None = None, max_shard_size: str | int = "5GB", force: bool = False,
            progress: bool | None = None, model_state=None) -> str:
  """Writes parameters (an nnx.State or a `Decoder`) as a Hugging Face directory. Model state
  (the DeepSeek routers' score-correction biases) comes from the `Decoder`, from `params` when
  it holds it, or from `model_state`."""
  if isinstance(params, nnx.Module):
    params = nnx.state(params)  # parameters and model state
  if model_state is not None:
    params = nnx.from_flat_state(list(nnx.to_flat_state(params)) + list(nnx.to_flat_state(model_state)))
  out_dtype = numpy_dtype(dtype)
  dtype_name = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(out_dtype, "bfloat16")
  hf = hf_config_for(model_cfg, dtype=dtype_name, base=base_config)
  fam = families.get(hf["model_type"]).weights
  flat = {path: (var.get_value() if isinstance(var, nnx.Variable) else var) for path, var in nnx.to_flat_state(params)}
  shapes = {p: tuple(a.shape) for p, a in flat.items()}
  entries = tables.plan(model_cfg, fam)
  tables.check_coverage(entries, shapes)
  by_key = {e.key: e for e in entries}
  planned = [OutTensor(e.key, tables.hf_shape(e.layout, tables.slice_shape(shapes[e.path], e.index)), out_dtype)
             for e in entries]

  def produce(key: str) -> np.ndarray:
    e = by_key[key]
    value = tables.to_hf(e.layout, _fetch(flat[e.path], e.index))
    return value.astype(out_dtype, copy=False)

  prepare_out_dir(out, force)
  bar = progress_bar(len(planned), f"writing {os.path.basename(os.path.abspath(out))}", progress)
  try:
    n_params = sum(int(np.prod(t.shape)) for t in planned)
    write_sharded(out, planned, produce, max_shard_bytes=parse_size(max_shard_size), bar=bar,
                  extra_metadata={"total_parameters": n_params})
  finally:
    bar.close()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
    f.write("\n")
  copied = []
  if copy_files_from and os.path.isdir(copy_files_from):
    for name in TOKENIZER_FILES:
      src = os.path.join(copy_files_from, name)
      if os.path.isfile(src):
        shutil.copy2(src, os.path.join(out, name))
        copied.append(name)
  if copied:
    log.info("copied %s from %s", ", ".join(copied), copy_files_from)
  return out


def _saved_hf_base(saved: dict) -> tuple[dict | None, str | None]:
  """(config.json dict, directory to copy tokenizer files from) of the run's starting point."""
  model = saved.get("model", {})
  init_from = model.get("init_from") or ""
  base, files = None, None
  if init_from and hf_config.is_hf_dir(init_from):
    base, files = hf_config.read_hf_config(init_from), init_from
  elif init_from and os.path.isdir(init_from) and os.path.isfile(os.path.join(init_from, "config.json")):
    # A jaxtrain checkpoint (e.g. written by import-hf): follow it to its own starting point.
    try:
      with open(os.path.join(init_from, "config.json")) as f:
        inner = json.load(f)
      if isinstance(inner, dict) and "model" in inner and inner["model"].get("init_from") != init_from:
        base, files = _saved_hf_base(inner)
    except (OSError, json.JSONDecodeError):
      pass
  elif init_from:
    log.warning("the run started from %s, which is gone: config.json is generated and no tokenizer files are "
                "copied", init_from)
  tokenizer = (saved.get("data") or {}).get("tokenizer")
  if files is None and isinstance(tokenizer, str) and os.path.isdir(tokenizer):
    files = tokenizer
  return base, files


def export_hf(ckpt: str, out: str, *, dtype: str | None = None, step: int | None = None, force: bool = False,
              max_shard_size: str | int = "5GB", progress: bool | None = None, mesh=None) -> str:
  """A jaxtrain checkpoint, workdir or import-hf directory -> a Hugging Face directory."""
  ckpt = os.path.expanduser(ckpt)
  if not os.path.exists(ckpt):
    raise ConversionError(f"{ckpt}: no such checkpoint or workdir")
  if os.path.isdir(out) and os.listdir(out) and not force:
    raise ConversionError(f"{out}: output directory exists and is not empty; pass --force to overwrite")
  if os.path.abspath(out) == os.path.abspath(ckpt):
    raise ConversionError(f"{out}: the output directory must differ from the checkpoint")
  _, step, section, saved = checkpoint_model_section(ckpt, step)
  if (saved.get("lora") or {}).get("rank"):
    raise ConversionError(f"{ckpt}: this run trained LoRA adapters (its checkpoints hold only them): pass --adapter "
                          "for a PEFT adapter directory or --merge for full weights with the adapters merged")
  section = {k: v for k, v in section.items() if k != "init_from"}
  model_cfg = ModelConfig.from_config(section)
  dtype = dtype or "float32"
  params = load_checkpoint_params(ckpt, model_cfg, step=step, mesh=mesh)
  base, files = _saved_hf_base(saved)
  log.info("exporting step %d of %s to %s", step, ckpt, out)
  return save_hf(params, model_cfg, out, dtype=dtype, base_config=base, copy_files_from=files,
                 max_shard_size=max_shard_size, force=force, progress=progress)


def import_hf(hf_dir: str, out: str, *, force: bool = False, progress: bool | None = None, mesh=None) -> str:
  """An HF directory -> a jaxtrain checkpoint at `out/checkpoints/0` (fp32 parameters only) with
  the resolved run config (`model.init_from` = the HF directory) saved inside and as
  `out/config.json`."""
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  if not hf_config.is_hf_dir(hf_dir):
    raise ConversionError(f"{hf_dir}: not a Hugging Face model directory (no config.json with a model_type)")
  section = hf_config.model_config_from_hf(hf_dir)
  section["init_from"] = hf_dir
  # The config saved with the checkpoint: the model and kernels sections (all that init_from
  # and export read), with their defaults.
  config = ConfigDict({"model": model_config.defaults(), "kernels": model_config.kernels_defaults()})
  config_lib.merge(config, {"model": section}, source=os.path.join(hf_dir, "config.json"))
  model_config.validate(config)
  model_cfg = ModelConfig.from_config(config.model)
  prepare_out_dir(out, force, outputs=("checkpoints", "config.json"))
  params, model_state = split_variables(load_hf_params(hf_dir, model_cfg, mesh=mesh, progress=progress))
  item = {"params": params} if model_state is None else {"params": params, "model_state": model_state}
  log.info("writing the jaxtrain checkpoint to %s", out)
  checkpoint.save_params(checkpoint.checkpoint_dir(out), item, json.loads(config_lib.to_json(config)))
  with open(os.path.join(out, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  return out


__all__ = ["export_hf", "import_hf", "save_hf", "hf_config_for", "prepare_out_dir"]
