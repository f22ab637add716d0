"""Start-up memory report: bytes per device of parameters and optimizer state (exact, from the
arrays' shardings) and an estimate of activation memory for the mesh and remat policy.

The activation estimate counts what the backward pass keeps per local token (activations
saved between forward and backward, plus one layer's working set for the layer being
recomputed or differentiated) and the chunked loss. It ignores XLA's temporary buffers and
fusion choices, so treat it as a planning number, not a bound.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import numpy as np

log = logging.getLogger("jaxtrain.parallel")


def shard_bytes(x) -> int:
  """Bytes of the largest shard of one array (or ShapeDtypeStruct with a sharding)."""
  shape, dtype = tuple(x.shape), np.dtype(x.dtype)
  sharding = getattr(x, "sharding", None)
  if sharding is not None and shape:
    shape = sharding.shard_shape(shape)
  return int(math.prod(shape)) * dtype.itemsize


def bytes_per_device(tree: Any) -> int:
  return sum(shard_bytes(x) for x in jax.tree.leaves(tree) if hasattr(x, "shape") and hasattr(x, "dtype"))


def _itemsize(name: str) -> int:
  return {"float32": 4, "bfloat16": 2, "float16": 2}[name]


def activation_bytes(model_cfg, *, global_batch: int, seq_len: int, micro_batches: int, mesh_shape: dict,
                     vocab_chunk: int, expert_exchange: str = "auto") -> dict[str, int]:
  """Estimated activation bytes per device for one micro-batch (see the module docstring)."""
  from jaxtrain import kernels

  m = model_cfg
  s = _itemsize(m.dtype)
  size = lambda a: int(mesh_shape.get(a, 1))  # noqa: E731
  batch_split = size("data") * size("fsdp") * size("expert")
  tp, sp, ep = size("tensor"), size("sequence"), size("expert")
  rows = max(global_batch // max(micro_batches, 1) // batch_split, 1)
  tokens = rows * max(seq_len // sp, 1)  # local tokens
  E, H, KVH, D = m.hidden_size, m.num_heads, m.num_kv_heads, m.resolved_head_dim
  heads, kv_heads = H / tp, max(KVH / tp, 1)

  # Attention, per local token, in elements of the compute dtype (fp32 terms scaled by 4 / s).
  attn = 2 * E + (2 * heads + 3 * kv_heads) * D + 2 * heads * D + E
  if sp > 1:
    attn += (2 * heads + 2 * math.lcm(int(kv_heads), sp)) * D  # Ulysses exchange buffers
  if kernels.resolve("attention", m.attention_impl)[0] == "xla":
    attn += 2 * heads * seq_len * 4 / s  # fp32 logits and probabilities over the whole sequence
  else:
    attn += 2 * heads * 4 / s  # blockwise kernels keep row statistics only
  dense = 3 * m.intermediate_size / tp + 2 * E
  if m.num_experts > 0:
    X, K, I = m.num_experts, m.num_experts_per_tok, m.moe_intermediate_size
    copies = K  # token copies per token that the expert FFN sees
    if ep > 1 or expert_exchange != "auto":
      # both exchanges size their receive buffer for the worst case: ep peers x min(K, local
      # experts) copies per token (the padded one also pads what it sends)
      copies = ep * min(K, max(X // ep, 1))
    moe = copies * (3 * E + 3 * I / tp) + K * 2 * E + 2 * X * 4 / s + 2 * E
  else:
    moe = 0
  kinds = [m.is_moe_layer(i) for i in range(m.num_layers)]
  per_layer = [attn + (moe if k else dense) + 2 * E for k in kinds]
  working = max(per_layer)
  saved_dots = lambda k: E + (heads + 2 * kv_heads) * D + E + ((moe if k else dense) / 2)  # noqa: E731
  if m.remat == "none":
    kept = sum(per_layer)
  elif m.remat == "full":
    kept = m.num_layers * E + working
  elif m.remat == "save_dots":
    kept = sum(saved_dots(k) for k in kinds) + working
  else:  # save_attention_out
    kept = m.num_layers * 2 * E + working
  layers = int(tokens * kept * s)
  loss = int(tokens * (2 * vocab_chunk * 4 + 2 * E * s))
  vision = vision_bytes(m, rows=rows, seq_len=seq_len, itemsize=s, tp=tp)
  return {"layers": layers, "loss": loss, "vision": vision, "total": layers + loss + vision, "local_tokens": tokens}


def vision_bytes(m, *, rows: int, seq_len: int, itemsize: int, tp: int = 1) -> int:
  """Estimated activation bytes of a vision tower for `rows` local rows at their capacity
  (`model.vision.row_capacity`: every patch slot is computed, padding included), under the
  tower's own remat policy; 0 for text models."""
  v = m.vision
  if not v.enabled:
    return 0
  if v.tower == "rope_vit":
    patches = rows * (v.row_capacity or seq_len * v.spatial_merge_size ** 2)
  else:
    tiles = v.row_capacity or max(seq_len // v.tokens_per_tile, 1)
    patches = rows * tiles * ((v.image_size // v.patch_size) ** 2 + 1)
  Ev, Iv = v.hidden_size, v.intermediate_size
  per_layer = 10 * Ev + 2 * Iv + 2 * v.num_heads * 4 / itemsize  # norms, q/k/v, attention out, MLP, row stats
  if v.remat == "none":
    kept = v.num_layers * per_layer
  elif v.remat == "full":
    kept = v.num_layers * Ev + per_layer
  else:
    kept = v.num_layers * (5 * Ev + Iv) + per_layer
  merger = 3 * Ev * (1 + len(v.deepstack_layers))  # merged windows: 4 patches -> one feature of 4x the width
  return int(patches * (kept + merger) * itemsize)


def report(state, model_cfg, config, mesh) -> dict[str, int]:
  """Per-device bytes: params and opt_state from `state`'s shardings (a TrainState of arrays
  or ShapeDtypeStructs), activations estimated from the config."""
  act = activation_bytes(model_cfg, global_batch=config.train.global_batch, seq_len=config.data.seq_len,
                         micro_batches=config.train.micro_batches, mesh_shape=dict(mesh.shape),
                         vocab_chunk=min(config.train.loss_vocab_chunk, model_cfg.vocab_size),
                         expert_exchange=config.mesh.get("expert_exchange", "auto"))
  params = bytes_per_device(state.params)
  opt = bytes_per_device(state.opt_state)
  frozen = bytes_per_device(getattr(state, "frozen", None))  # a LoRA / QLoRA base, a preference reference
  return {"params": params, "opt_state": opt, "frozen": frozen, "activations": act["total"],
          "total": params + opt + frozen + act["total"], "local_tokens": act["local_tokens"]}


def _gib(n: int) -> str:
  return f"{n / 2**30:.3f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def format_report(rep: dict[str, int], mesh, remat: str) -> str:
  shape = ", ".join(f"{a}={s}" for a, s in dict(mesh.shape).items())
  frozen = f", frozen params {_gib(rep['frozen'])}" if rep.get("frozen") else ""
  return (f"memory per device (mesh {shape}, remat {remat}): params {_gib(rep['params'])}, optimizer state "
          f"{_gib(rep['opt_state'])}{frozen}, activations ~{_gib(rep['activations'])} ({rep['local_tokens']} tokens per "
          f"device per micro-batch); total ~{_gib(rep['total'])}")


def log_report(state, model_cfg, config, mesh) -> dict[str, int]:
  """Computes and logs the report (process 0 only); returns it."""
  rep = report(state, model_cfg, config, mesh)
  if jax.process_index() == 0:
    log.info(format_report(rep, mesh, model_cfg.remat))
  return rep
