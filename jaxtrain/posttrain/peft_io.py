"""LoRA adapters <-> PEFT adapter directories (`adapter_config.json` +
`adapter_model.safetensors`), and merged full weights.

Module names come from the family's weight table (converters/families/): the HF key of the
adapted weight minus `.weight`, so `model.layers.3.self_attn.q_proj` gets
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` `[r, in]` and `lora_B.weight`
`[out, r]`; dense gate/up halves map to gate_proj / up_proj. Routed experts map to PEFT's
`target_parameters` adapters of transformers' fused expert weights (`mlp.experts.gate_up_proj`
`[X, 2I, E]`, wrapped innermost as `experts.base_layer`, and `mlp.experts.down_proj`
`[X, E, I]`, as `experts`): lora_A `[rank * X, in]` expert-major, lora_B `[out, rank * X]`
rank-major. Qwen3-MoE and Qwen2-MoE experts are exported this way (transformers 5 stores them
fused); other families' experts are refused with a message, and so is an adapter with both
expert and dense gate/up/down targets: PEFT 0.21 maps `gate_proj`/`up_proj` target modules onto
the fused expert weight (doubling its rank) and leaves the dense MLPs unadapted.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from flax import nnx

from jaxtrain.converters import families, tables
from jaxtrain.converters.errors import ConversionError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
EXPERT_FAMILIES = ("qwen3_moe", "qwen2_moe")
_DENSE = {"q_proj": ("attn", "q_proj"), "k_proj": ("attn", "k_proj"), "v_proj": ("attn", "v_proj"),
          "o_proj": ("attn", "o_proj")}


def _module_names(model_cfg) -> dict[tuple, str]:
  """{(parameter path, component or None): HF module name} from the family's weight table."""
  fam = families.get(model_cfg.arch).weights
  out = {}
  for e in tables.plan(model_cfg, fam):
    if e.layer < 0 or not e.key.endswith(".weight"):
      continue
    full = tables.full_index(e.index, len(e.index))
    if "experts." in e.key:
      head = e.key.split(".experts.")[0] + ".experts"
      out[(e.path, "experts")] = head
      continue
    component = full[2] if str(e.path[-1]) == "gate_up" and len(full) > 2 and isinstance(full[2], int) else None
    out[(e.path + (e.index[0],), component)] = e.key[:-len(".weight")]
  return out


def _flat(state) -> dict:
  return {p: np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v, np.float32)
          for p, v in nnx.to_flat_state(state)}


@dataclasses.dataclass(frozen=True)
class Slot:
  """One PEFT tensor = a rearranged slice of one adapter factor."""
  key: str
  path: tuple  # flat path of the factor (.../<weight>_lora/{a,b})
  rep: int  # the stacked layer index
  kind: str  # plain | fused | expert
  component: int = 0  # fused gate/up half


def slots(model_cfg, shapes: dict) -> list[Slot]:
  from jaxtrain.posttrain.lora import site_of
  names = _module_names(model_cfg)
  out = []
  for path, shape in shapes.items():
    site = site_of(path)
    weight_path = path[:-2] + (site.weight,)
    ab = "lora_A" if path[-1] == "a" else "lora_B"
    for rep in range(shape[0]):
      if site.experts:
        if model_cfg.arch not in EXPERT_FAMILIES:
          raise ConversionError(f"PEFT export of expert adapters supports {', '.join(EXPERT_FAMILIES)} (fused "
                                f"expert weights in transformers 5); {model_cfg.arch} is not one of them")
        module = _expert_module(names, weight_path, rep, model_cfg) + (".base_layer" if site.weight == "gate_up" else "")
        out.append(Slot(f"{PREFIX}{module}.{ab}.weight", path, rep, "expert"))
      elif site.fused:
        for c in range(2):
          out.append(Slot(f"{PREFIX}{names[(weight_path + (rep,), c)]}.{ab}.weight", path, rep, "fused", c))
      else:
        out.append(Slot(f"{PREFIX}{names[(weight_path + (rep,), None)]}.{ab}.weight", path, rep, "plain"))
  return out


def _export(slot: Slot, factor: np.ndarray) -> np.ndarray:
  """Factor `[layers, ...]` -> the PEFT tensor of `slot`."""
  v, is_a = factor[slot.rep], slot.path[-1] == "a"
  if slot.kind == "expert":
    X = v.shape[0]
    if is_a:  # [X, in, rk] -> [X * rk, in]
      return v.transpose(0, 2, 1).reshape(X * v.shape[-1], -1)
    rk = v.shape[1]  # [X, rk, out...] -> [out, rk * X]
    return v.reshape(X, rk, -1).transpose(2, 1, 0).reshape(-1, rk * X)
  if slot.kind == "fused":
    return (v[:, slot.component, :] if is_a else v[slot.component]).T
  r = v.shape[-1] if is_a else v.shape[0]
  return (v.reshape(-1, r) if is_a else v.reshape(r, -1)).T


def _import(slot: Slot, factor: np.ndarray, tensor: np.ndarray) -> None:
  """Writes the PEFT tensor of `slot` into `factor` (in place; inverse of `_export`)."""
  v, is_a = factor[slot.rep], slot.path[-1] == "a"
  if slot.kind == "expert":
    X = v.shape[0]
    if is_a:
      v[...] = tensor.reshape(X, v.shape[-1], -1).transpose(0, 2, 1)
    else:
      rk = v.shape[1]
      v[...] = tensor.reshape(-1, rk, X).transpose(2, 1, 0).reshape(v.shape)
  elif slot.kind == "fused":
    if is_a:
      v[:, slot.component, :] = tensor.T
    else:
      v[slot.component] = tensor.T
  else:
    v[...] = tensor.T.reshape(v.shape)


def to_peft(adapters: nnx.State, model_cfg, adapter_obj) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, adapter_config) of a jaxtrain adapter state."""
  flat = _flat(adapters)
  tensors, modules, params = {}, set(), []
  for slot in slots(model_cfg, {p: v.shape for p, v in flat.items()}):
    tensors[slot.key] = np.ascontiguousarray(_export(slot, flat[slot.path]))
    if slot.kind == "expert":
      name = "gate_up_proj" if ".base_layer." in slot.key else "down_proj"
      if name not in params:
        params.append(name)
    else:
      modules.add(slot.key.split(".lora_")[0].rsplit(".", 1)[-1])
  target_parameters = [f"mlp.experts.{p}" for p in ("gate_up_proj", "down_proj") if p in params] or None
  if target_parameters and {"gate_proj", "up_proj", "down_proj"} & modules:
    raise ConversionError("PEFT 0.21 cannot load one adapter with both routed-expert and dense MLP "
                          "(gate_proj/up_proj/down_proj) targets: it maps those names onto the fused expert weights; "
                          "train with lora.targets without the dense MLP names, or export with --merge")
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": adapter_obj.rank, "lora_alpha": adapter_obj.alpha,
      "use_rslora": adapter_obj.rslora, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
      "target_modules": sorted(modules), "target_parameters": target_parameters, "inference_mode": True,
      "init_lora_weights": True, "base_model_name_or_path": None, "modules_to_save": None,
  }
  return tensors, config


def _expert_module(names, weight_path, rep, model_cfg) -> str:
  for (path, kind), name in names.items():
    if kind == "experts" and path == weight_path:
      layer = _layer_of(model_cfg, weight_path, rep)
      return name.replace(name.split(".experts")[0], f"model.layers.{layer}.mlp")
  raise ConversionError(f"internal: no expert module for {'/'.join(map(str, weight_path))}")


def _layer_of(model_cfg, weight_path, rep) -> int:
  stage, slot = int(weight_path[1]), int(weight_path[3])
  for i in range(model_cfg.num_layers):
    if model_cfg.layer_location(i) == (stage, rep, slot):
      return i
  raise ConversionError(f"internal: no layer at stage {stage} repeat {rep} slot {slot}")


def write_adapter(out: str, tensors: dict[str, np.ndarray], config: dict, *, dtype: str = "float32") -> str:
  from safetensors.numpy import save_file
  import ml_dtypes
  os.makedirs(out, exist_ok=True)
  np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
  save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()},
            os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(out, ADAPTER_CONFIG), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")
  return out


def read_adapter(path: str, abstract_adapters: nnx.State, model_cfg, adapter_obj) -> dict:
  """A PEFT adapter directory -> {flat adapter path: array} for `abstract_adapters`; the
  config's r / lora_alpha must match the run's lora section and every tensor must be present
  with the shape the base model implies (ConversionError naming the tensor otherwise)."""
  from safetensors.numpy import load_file
  cfg_path = os.path.join(path, ADAPTER_CONFIG)
  if not os.path.isfile(cfg_path) or not os.path.isfile(os.path.join(path, ADAPTER_WEIGHTS)):
    raise ConversionError(f"{path}: not a PEFT adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
  with open(cfg_path) as f:
    saved = json.load(f)
  for key, want in (("r", adapter_obj.rank), ("lora_alpha", adapter_obj.alpha)):
    if float(saved.get(key, -1)) != float(want):
      raise ConversionError(f"{cfg_path}: {key}={saved.get(key)} but the run has lora.{'rank' if key == 'r' else 'alpha'}"
                            f"={want}")
  loaded = load_file(os.path.join(path, ADAPTER_WEIGHTS))
  zeros = {p: np.zeros(v.get_value().shape, np.float32) for p, v in nnx.to_flat_state(abstract_adapters)}
  expected = {slot.key: _export(slot, zeros[slot.path]) for slot in slots(model_cfg, {p: v.shape for p, v in
                                                                                      zeros.items()})}
  problems = [f"missing tensor {k} (expected shape {list(v.shape)})" for k, v in expected.items() if k not in loaded]
  problems += [f"{k}: shape {list(loaded[k].shape)}, expected {list(v.shape)} (an adapter for another base model?)"
               for k, v in expected.items() if k in loaded and loaded[k].shape != v.shape]
  problems += [f"unexpected tensor {k} (not a target of lora.targets)" for k in loaded if k not in expected]
  if problems:
    raise ConversionError(f"{path}: the adapter does not match the run's base model and lora.targets:\n  "
                          + "\n  ".join(problems[:20]))
  for slot in slots(model_cfg, {p: v.shape for p, v in zeros.items()}):
    _import(slot, zeros[slot.path], loaded[slot.key].astype(np.float32))
  return zeros


# -- run checkpoints -------------------------------------------------------------------------

def _run_setup(ckpt: str, step):
  """(checkpoint dir, step, saved run config, ModelConfig, Adapters) of a LoRA run's checkpoint."""
  from jaxtrain.converters.load import checkpoint_model_section
  from jaxtrain.models.config import ModelConfig
  from jaxtrain.posttrain.lora import Adapters
  directory, step, section, saved = checkpoint_model_section(ckpt, step)
  lora_section = saved.get("lora") or {}
  if not lora_section.get("rank"):
    raise ConversionError(f"{ckpt}: this run trained no LoRA adapters (lora.rank=0); export it without --adapter "
                          "or --merge")
  model_cfg = ModelConfig.from_config({k: v for k, v in section.items() if k != "init_from"})
  adapters = Adapters.from_config(_Section(lora_section), model_cfg)
  return directory, step, saved, model_cfg, adapters


class _Section(dict):
  __getattr__ = dict.__getitem__


def load_run_adapters(ckpt: str, step=None):
  """(adapters nnx.State, ModelConfig, Adapters, saved config) from a LoRA run's checkpoint."""
  import jax
  from jaxtrain import checkpoint
  directory, step, saved, model_cfg, adapters = _run_setup(ckpt, step)
  _, abstract = adapters.abstract(int(saved.get("seed", 0)))
  target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), abstract)
  restored = checkpoint.restore_params(directory, step, {"params": target})
  return restored["params"], model_cfg, adapters, saved


def export_adapter(ckpt: str, out: str, *, step=None, dtype: str = "float32", force: bool = False) -> str:
  """`export-hf --adapter`: a LoRA run's adapters -> a PEFT adapter directory."""
  from jaxtrain.converters.export import prepare_out_dir
  state, model_cfg, adapters, saved = load_run_adapters(ckpt, step)
  tensors, config = to_peft(state, model_cfg, adapters)
  config["base_model_name_or_path"] = (saved.get("model") or {}).get("init_from") or None
  prepare_out_dir(out, force, outputs=(ADAPTER_CONFIG, ADAPTER_WEIGHTS))
  return write_adapter(out, tensors, config, dtype=dtype)


def export_merged(ckpt: str, out: str, *, step=None, dtype: str = "float32", force: bool = False,
                  max_shard_size="5GB", progress=None) -> str:
  """`export-hf --merge`: the run's base (model.init_from, or its seed's random weights) with the
  adapters folded in, as a Hugging Face directory. Under QLoRA the adapters are folded into the
  dequantized base (NF4 / int8 blocks, as the run quantized it): that is the model the adapters
  were trained with and the one the run computed, so the export reproduces its logits; folding
  them into the full-precision weights would add back the quantization error they learned
  around."""
  import jax
  from jaxtrain.converters.export import _saved_hf_base, save_hf
  from jaxtrain.converters.load import load_params
  from jaxtrain.models import factory
  state, model_cfg, adapters, saved = load_run_adapters(ckpt, step)
  init_from = (saved.get("model") or {}).get("init_from")
  if init_from:
    base = load_params(init_from, model_cfg, progress=progress)
  else:
    seed = int(saved.get("seed", 0))
    base = jax.jit(lambda: nnx.state(factory.create(model_cfg, seed), nnx.Param))()
  lora_section = saved.get("lora") or {}
  if lora_section.get("quantize", "none") != "none":
    from jaxtrain.posttrain.qlora import Quantizer
    base = Quantizer.from_config(_Section(lora_section)).dequantized(base)
  from jaxtrain.posttrain.lora import merge
  base_cfg, files = _saved_hf_base(saved)
  return save_hf(merge(base, state, adapters.scale), model_cfg, out, dtype=dtype, base_config=base_cfg,
                 copy_files_from=files, max_shard_size=max_shard_size, force=force, progress=progress)
