"""Parameters from a Hugging Face directory or a jaxtrain checkpoint, born in their target
shardings.

HF weights stream tensor by tensor. Everything is validated first, before any weight bytes are
read: the config (against the run's model config), then every tensor's presence, shape and
dtype; missing, unexpected and mis-shaped tensors are reported together, each with its key,
file and shapes. Then, per parameter:

  small (<= HOST_ASSEMBLY_BYTES): assembled in one host buffer from its HF tensors (transposed,
      layers and experts stacked) and placed in its sharding once;
  large: allocated once in its sharding (zeros under `jit` with `out_shardings`) and filled in
      place: each HF tensor (one layer's projection, or one expert of one layer) is read in row
      blocks of at most CHUNK_BYTES, and each block is transferred, transposed, cast and written
      into its slice by a jitted `dynamic_update_slice` that donates the array.

So host memory holds the final parameters plus a bounded working set (one block, or one small
parameter), whatever the model size; see experiments/import_memory.py.

Quantized releases (DeepSeek-V3 / Kimi-K2 FP8 block scales, GPT-OSS MXFP4 experts) are read
through `dequant.DequantizedWeights`, which dequantizes each row block to float32 as it is
read, so the same bound holds. Non-trainable model state the checkpoint carries (the DeepSeek
routers' `e_score_correction_bias`) is loaded like a parameter into `ModelState` variables;
multi-token-prediction layers (`num_nextn_predict_layers`) are skipped with a notice.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtrain.converters import dequant, families, hf_config, tables
from jaxtrain.converters.errors import ConversionError, format_problems
from jaxtrain.converters.safetensors_io import DTYPES, WeightDir
from jaxtrain.converters.signature import signature_diff
from tqdm import tqdm

from jaxtrain import checkpoint
from jaxtrain.config import ConfigError
from jaxtrain.models import factory
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel import mesh as mesh_lib
from jaxtrain.parallel.rules import param_shardings

log = logging.getLogger("jaxtrain.converters")

FLOAT_CODES = ("F64", "F32", "F16", "BF16")
# Parameters up to this size are assembled on the host and placed in one transfer; larger ones
# are allocated in their sharding and filled in place, one HF tensor at a time.
HOST_ASSEMBLY_BYTES = 32 * 2**20
# HF tensors of large parameters are read and placed in row blocks of at most this size.
CHUNK_BYTES = 16 * 2**20


# -- progress --------------------------------------------------------------------------------

def progress_bar(total: int, desc: str, enabled: bool | None):
  """tqdm on stderr when enabled (None = when stderr is a terminal)."""
  if enabled is None:
    enabled = sys.stderr.isatty()
  return tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
              disable=not enabled)


# -- shardings -------------------------------------------------------------------------------

def default_mesh():
  return mesh_lib.make_mesh(mesh_lib.defaults())


def _flat_shardings(shardings) -> dict:
  if isinstance(shardings, dict) and not isinstance(shardings, nnx.State):
    return dict(shardings)
  return {path: var.get_value() if isinstance(var, nnx.Variable) else var
          for path, var in nnx.to_flat_state(shardings)}


def abstract_and_shardings(model_cfg, params_sharding=None, mesh=None, state_sharding=None):
  """(graphdef, abstract params, abstract model state, {path: abstract var}, {path: sharding});
  the flat maps cover the parameters and the non-trainable model state (`ModelState`)."""
  graphdef, abstract, rest = factory.abstract_model(model_cfg)
  if params_sharding is None:
    mesh = mesh if mesh is not None else default_mesh()
    params_sharding = param_shardings(abstract, mesh)
  flat_abstract = {path: var for path, var in nnx.to_flat_state(abstract)}
  flat_sh = _flat_shardings(params_sharding)
  if set(flat_abstract) != set(flat_sh):
    raise ConfigError("params_sharding does not match the model's parameters: "
                      f"{sorted(set(flat_abstract) ^ set(flat_sh))[:5]}")
  flat_rest = {path: var for path, var in nnx.to_flat_state(rest)}
  if flat_rest:
    if state_sharding is None:
      if mesh is None:  # the mesh of the given parameter shardings
        mesh = next((sh.mesh for sh in flat_sh.values() if hasattr(sh, "mesh")), None) or default_mesh()
      state_sharding = param_shardings(rest, mesh)
    flat_rest_sh = _flat_shardings(state_sharding)
    if set(flat_rest) != set(flat_rest_sh):
      raise ConfigError("state_sharding does not match the model's state: "
                        f"{sorted(set(flat_rest) ^ set(flat_rest_sh))[:5]}")
    flat_abstract.update(flat_rest)
    flat_sh.update(flat_rest_sh)
  return graphdef, abstract, rest, flat_abstract, flat_sh


def split_variables(variables: nnx.State) -> tuple[nnx.State, nnx.State | None]:
  """(parameters, model state or None when the model has none) of a loaded State."""
  params, rest = nnx.split_state(variables, nnx.Param, ...)
  return params, (rest if jax.tree.leaves(rest) else None)


def _state_from(flat_abstract: dict, arrays: dict) -> nnx.State:
  return nnx.from_flat_state([(path, var.replace(arrays[path])) for path, var in flat_abstract.items()])


@functools.lru_cache(maxsize=None)
def _zeros_fn(shape, dtype, sharding):
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _chunk_update_fn(sharding, layout: str, chunk_sshape: tuple, ushape: tuple, dtype):
  def update(a, u, starts):
    v = tables.to_param(layout, u, chunk_sshape, xp=jnp).astype(dtype).reshape(ushape)
    return jax.lax.dynamic_update_slice(a, v, starts)
  return jax.jit(update, donate_argnums=0, out_shardings=sharding)


def _fill(arr, e: tables.Entry, weights: WeightDir, shape: tuple, dtype, sharding):
  """Writes HF tensor `e.key` into its slice of `arr` (donated), a block of rows at a time."""
  sshape = tables.slice_shape(shape, e.index)
  starts, ushape = tables.update_geometry(shape, e.index)
  info = weights.infos[e.key]
  axis = tables.chunk_axis(e.layout, sshape)
  if axis is None:
    blocks, sdim, unit = [(0, sshape[0] if sshape else 1)], None, 1
  else:
    sdim, unit = axis
    row_bytes = max(1, math.prod(info.shape[1:]) * np.dtype(DTYPES[info.dtype]).itemsize)
    step = max(1, CHUNK_BYTES // (unit * row_bytes))
    blocks = [(c, min(c + step, sshape[sdim])) for c in range(0, sshape[sdim], step)]
  for c0, c1 in blocks:
    if sdim is None:
      u, chunk_sshape, chunk_starts, chunk_ushape = weights.read(e.key), sshape, starts, ushape
    else:
      u = weights.read(e.key, rows=(c0 * unit, c1 * unit))
      pdim = tables.param_dim(e.index, len(shape), sdim)
      chunk_sshape = sshape[:sdim] + (c1 - c0,) + sshape[sdim + 1:]
      chunk_starts = starts[:pdim] + (starts[pdim] + c0,) + starts[pdim + 1:]
      chunk_ushape = ushape[:pdim] + (c1 - c0,) + ushape[pdim + 1:]
    update = _chunk_update_fn(sharding, e.layout, chunk_sshape, chunk_ushape, np.dtype(dtype))
    arr = update(arr, u, tuple(np.int32(s) for s in chunk_starts))
    del u
  return arr


def _from_host(value: np.ndarray, sharding) -> jax.Array:
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


# -- HF directory ----------------------------------------------------------------------------

def check_config_matches(model_cfg, path: str) -> Any:
  """The ModelConfig `path` (HF dir or jaxtrain checkpoint) describes; ConfigError naming every
  field where the run's `model_cfg` would compute something different."""
  if hf_config.is_hf_dir(path):
    source = os.path.join(path, "config.json")
    other = ModelConfig.from_config(hf_config.from_hf(hf_config.read_hf_config(path), source=source))
  else:
    source = f"the checkpoint in {path}"
    other = ModelConfig.from_config(checkpoint_model_section(path)[2])
  diff = signature_diff(model_cfg, other, a_name="run config", b_name=f"{os.path.basename(source)}:")
  if diff:
    raise ConfigError(format_problems(
        f"config model.init_from={path}: the run's model section does not match {source} "
        f"(leave these fields at their defaults to take them from there, or fix them):", diff))
  return other


def _mtp_layer(key: str, num_layers: int, mtp_layers: int) -> bool:
  """A tensor of a multi-token-prediction layer (stored as model.layers.{num_layers + i}.*)."""
  parts = key.split(".")
  return (mtp_layers > 0 and len(parts) > 2 and parts[:2] == ["model", "layers"] and parts[2].isdigit()
          and num_layers <= int(parts[2]) < num_layers + mtp_layers)


def validate_weights(weights: WeightDir, entries: list[tables.Entry], fam: tables.WeightTable,
                     shapes: dict[tuple, tuple], model_cfg, *, mtp_layers: int = 0) -> None:
  problems = []
  skipped_mtp = []
  expected = {e.key for e in entries}
  for e in entries:
    info = weights.infos.get(e.key)
    want = tables.hf_shape(e.layout, tables.slice_shape(shapes[e.path], e.index))
    if info is None:
      problems.append(f"missing tensor {e.key} (expected shape {list(want)})")
    elif info.shape != want:
      problems.append(f"{e.key} in {os.path.basename(info.file)}: shape {list(info.shape)}, expected {list(want)}")
    elif info.dtype not in FLOAT_CODES:
      problems.append(f"{e.key} in {os.path.basename(info.file)}: dtype {info.dtype} is not a float type "
                      f"(quantized tensors are read only as FP8 with a {e.key}{dequant.SCALE_SUFFIX} block-scale "
                      f"tensor, or as MXFP4 _blocks/_scales pairs)")
  for key, info in weights.infos.items():
    if key in expected or fam.ignorable(key):
      continue
    if _mtp_layer(key, model_cfg.num_layers, mtp_layers):
      skipped_mtp.append(key)
      continue
    if math.prod(info.shape) == 0:
      log.info("%s: %s holds no values (shape %s); skipped", info.file, key, list(info.shape))
      continue
    if key == "lm_head.weight" and model_cfg.tie_word_embeddings:
      log.info("%s: tie_word_embeddings is set, so lm_head.weight is not used (as in transformers)", info.file)
      continue
    problems.append(f"unexpected tensor {key} in {os.path.basename(info.file)} (shape {list(info.shape)})")
  if problems:
    raise ConversionError(format_problems(
        f"{weights.directory}: the weights do not match the {model_cfg.arch} config:", problems))
  if skipped_mtp:
    layers = sorted({int(k.split(".")[2]) for k in skipped_mtp})
    log.warning("%s: skipping %d tensors of %d multi-token-prediction layer(s) (model.layers.%s.*): MTP is not "
                "a training objective here and not part of the forward pass (transformers skips them too); an "
                "export will not contain them", weights.directory, len(skipped_mtp), len(layers),
                ",".join(map(str, layers)))


def load_hf_params(hf_dir: str, model_cfg, params_sharding=None, *, mesh=None, progress: bool | None = None,
                   state_sharding=None):
  """nnx.State of the parameters and the model state (`ModelState`, if the model has any) for
  `model_cfg` from a Hugging Face directory; `split_variables` separates them."""
  hf_cfg = check_config_matches(model_cfg, hf_dir)
  fam = families.FAMILIES[hf_cfg.arch].weights
  raw = hf_config.read_hf_config(hf_dir)
  weights = WeightDir(hf_dir)
  if dequant.quantization_method(raw) or any(i.dtype not in FLOAT_CODES for i in weights.infos.values()):
    weights = dequant.DequantizedWeights(weights, raw)
  _, _, _, flat_abstract, flat_sh = abstract_and_shardings(model_cfg, params_sharding, mesh, state_sharding)
  shapes = {p: tuple(v.get_value().shape) for p, v in flat_abstract.items()}
  entries = tables.plan(model_cfg, fam)
  tables.check_coverage(entries, shapes)
  entries = tables.adapt_layouts(entries, {k: i.shape for k, i in weights.infos.items()}, shapes)
  mtp = int(raw.get("num_nextn_predict_layers") or raw.get("num_mtp_layers") or 0)
  validate_weights(weights, entries, fam, shapes, model_cfg, mtp_layers=mtp)

  by_param: dict[tuple, list[tables.Entry]] = {}
  for e in entries:
    by_param.setdefault(e.path, []).append(e)
  arrays = {}
  bar = progress_bar(len(entries), f"loading {os.path.basename(os.path.abspath(hf_dir))}", progress)
  try:
    for path, group in by_param.items():
      shape, dtype, sharding = shapes[path], flat_abstract[path].get_value().dtype, flat_sh[path]
      if math.prod(shape) * np.dtype(dtype).itemsize <= HOST_ASSEMBLY_BYTES:
        # Small parameter: assemble on the host, place once (no per-shape compilation).
        value = np.empty(shape, dtype)
        for e in group:
          sshape = tables.slice_shape(shape, e.index)
          value[tables.full_index(e.index, len(shape))] = tables.to_param(e.layout, weights.read(e.key), sshape)
          bar.update(1)
        arrays[path] = _from_host(value, sharding)
        del value
        continue
      # Large parameter: allocate it once in its sharding and fill it in place, each HF tensor
      # in row blocks of at most CHUNK_BYTES (read, transferred, transposed and cast on device).
      arr = _zeros_fn(shape, dtype, sharding)()
      for e in group:
        arr = _fill(arr, e, weights, shape, dtype, sharding)
        bar.update(1)
      arrays[path] = arr
  finally:
    bar.close()
  jax.block_until_ready(list(arrays.values()))
  return _state_from(flat_abstract, arrays)


# -- jaxtrain checkpoints --------------------------------------------------------------------

def is_checkpoint(path: str) -> bool:
  directory = checkpoint.resolve_checkpoint_dir(path)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def checkpoint_model_section(path: str, step: int | None = None) -> tuple[str, int, dict, dict]:
  """(checkpoint directory, step, saved model section, whole saved run config)."""
  directory = checkpoint.resolve_checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise ConversionError(f"{path}: not a Hugging Face directory (no config.json with model_type) and no "
                          f"jaxtrain checkpoints under it")
  if os.path.basename(os.path.abspath(path)).isdigit() and step is None and os.path.isdir(os.path.join(path, "state")):
    step = int(os.path.basename(os.path.abspath(path)))
  ckpt = checkpoint.Checkpointer(directory, read_only=True, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise ConversionError(f"{path}: no complete jaxtrain checkpoint under {directory}")
    if step not in ckpt.all_steps():
      raise ConversionError(f"{path}: no checkpoint for step {step} (have {ckpt.all_steps()})")
    saved = ckpt.restore_config(step)
  finally:
    ckpt.close()
  if not isinstance(saved, dict) or "model" not in saved:
    raise ConversionError(f"{directory}/{step}/config: the saved run config has no model section")
  return directory, step, dict(saved["model"]), saved


def load_checkpoint_params(path: str, model_cfg, params_sharding=None, *, step: int | None = None, mesh=None,
                           state_sharding=None):
  """Only the parameters (and the model state, if the model has any) of a jaxtrain checkpoint
  (a training run's or import-hf's), restored straight into their target shardings; optimizer
  state is never read."""
  check_config_matches(model_cfg, path)
  directory, step, _, _ = checkpoint_model_section(path, step)
  _, _, _, flat_abstract, flat_sh = abstract_and_shardings(model_cfg, params_sharding, mesh, state_sharding)
  target = _state_from(flat_abstract, {
      p: jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=flat_sh[p])
      for p, v in flat_abstract.items()})
  params_target, state_target = split_variables(target)
  item = {"params": params_target} if state_target is None else {"params": params_target, "model_state": state_target}
  try:
    restored = checkpoint.restore_params(directory, step, item)
  except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
    raise ConversionError(f"{directory}/{step}: cannot restore the parameters: {e}") from e
  arrays = {}
  for name in item:
    arrays.update({p: v.get_value() if isinstance(v, nnx.Variable) else v
                   for p, v in nnx.to_flat_state(restored[name])})
  return _state_from(flat_abstract, arrays)


# -- entry points ----------------------------------------------------------------------------

def load_params(path: str, model_cfg, params_sharding=None, *, step: int | None = None, mesh=None,
                progress: bool | None = None, with_state: bool = False, state_sharding=None):
  """Parameters (nnx.State, in `params_sharding`) for `model.init_from=path`: a Hugging Face
  directory or a jaxtrain checkpoint / workdir. The checkpoint's config must describe the same
  numerics as `model_cfg`, else ConfigError naming the fields. With `with_state`, returns
  (params, model state or None) (the model state in `state_sharding`)."""
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise ConfigError(f"config model.init_from={path}: no such file or directory")
  if hf_config.is_hf_dir(path):
    variables = load_hf_params(path, model_cfg, params_sharding, mesh=mesh, progress=progress,
                               state_sharding=state_sharding)
  elif is_checkpoint(path):
    variables = load_checkpoint_params(path, model_cfg, params_sharding, step=step, mesh=mesh,
                                       state_sharding=state_sharding)
  else:
    raise ConfigError(f"config model.init_from={path}: neither a Hugging Face directory (config.json with a "
                      f"model_type) nor a jaxtrain checkpoint / workdir")
  params, model_state = split_variables(variables)
  return (params, model_state) if with_state else params


def model_section(path: str, *, step: int | None = None) -> dict:
  """The architecture part of the `model` section for an HF directory or jaxtrain checkpoint."""
  if hf_config.is_hf_dir(path):
    return hf_config.model_config_from_hf(path)
  section = checkpoint_model_section(path, step)[2]
  return {k: v for k, v in section.items() if k not in hf_config.TRAINING_FIELDS}


def from_pretrained(path: str, dtype: str = "float32", *, mesh=None, step: int | None = None,
                    progress: bool | None = None):
  """An NNX `Decoder` (call it: `model(input_ids).logits`) with weights from a Hugging Face
  directory or a jaxtrain checkpoint / workdir. `dtype` is both the parameter and the compute
  dtype. Parameters are sharded over `mesh` (default: all devices on the fsdp axis)."""
  path = os.path.expanduser(str(path))
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file or directory")
  if dtype not in ("float32", "bfloat16", "float16"):
    raise ConversionError(f"dtype={dtype!r}: use float32, bfloat16 or float16")
  section = dict(model_section(path, step=step))
  section.update(dtype=dtype, param_dtype=dtype)
  cfg = ModelConfig.from_config(section)
  graphdef, abstract, rest, _, flat_sh = abstract_and_shardings(cfg, mesh=mesh)
  param_paths = {path for path, _ in nnx.to_flat_state(abstract)}
  param_sh = {p: sh for p, sh in flat_sh.items() if p in param_paths}
  state_sh = {p: sh for p, sh in flat_sh.items() if p not in param_paths} or None
  params, model_state = load_params(path, cfg, param_sh, step=step, mesh=mesh, progress=progress, with_state=True,
                                    state_sharding=state_sh)
  return nnx.merge(graphdef, params, rest if model_state is None else model_state)
