"""Writing sharded safetensors: `model-0000i-of-0000n.safetensors` + the index.

Hand-written on purpose. The library's writers take every tensor of a file at once
(`safetensors.numpy.save_file(dict)`, `serialize_file({name: TensorSpec(data_ptr=...)})`), so a
writer built on them holds a whole shard (up to the 5 GB default max_shard_size) of freshly
produced tensors in host memory. `write_sharded` plans the shards from (key, shape, dtype) alone,
writes each header first and then streams the tensors one by one from the callback, so one
tensor at a time is in host memory. Measured (experiments/import_memory.py --export, results in
experiments/RESULTS.md): at the default shard size the library writer raises the export's
write-phase peak by ~200 MB for a 464 MB model and ~320 MB for an 804 MB one (it grows with the
shard), while the streaming writer costs nothing beyond producing the tensors. Each finished
shard is opened with the library's `safe_open` before it is renamed into place, so the library
validates what this writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable

import numpy as np
from safetensors import SafetensorError, safe_open

from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.safetensors_io import DTYPE_NAMES, SAFETENSORS_INDEX

def parse_size(text: str | int) -> int:
  """'5GB' / '500MB' / '2GiB' / 123 -> bytes."""
  if isinstance(text, int):
    return text
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)?\s*", str(text), re.IGNORECASE)
  if not m:
    raise ConversionError(f"cannot parse size {text!r} (use e.g. 5GB, 500MB)")
  unit = (m.group(2) or "").upper().rstrip("B")
  scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
  return int(float(m.group(1)) * scale)


@dataclass(frozen=True)
class OutTensor:
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
  shards: list[list[OutTensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def _header_bytes(shard: list[OutTensor]) -> bytes:
  header: dict = {"__metadata__": {"format": "pt"}}
  offset = 0
  for t in shard:
    header[t.key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw


def write_sharded(out_dir: str, tensors: list[OutTensor], produce: Callable[[str], np.ndarray], *,
                  max_shard_bytes: int, bar=None, extra_metadata: dict | None = None) -> list[str]:
  """Writes `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, calling
  `produce(key)` once per tensor in order. Returns the shard file names."""
  shards = plan_shards(tensors, max_shard_bytes)
  n = len(shards)
  names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  weight_map = {}
  total = 0
  for name, shard in zip(names, shards):
    path = os.path.join(out_dir, name)
    with open(path + ".partial", "wb") as f:
      f.write(_header_bytes(shard))
      for t in shard:
        value = produce(t.key)
        if tuple(value.shape) != t.shape or value.dtype != t.dtype:
          raise ConversionError(f"internal error writing {t.key}: got {value.shape} {value.dtype}, "
                                f"planned {t.shape} {t.dtype}")
        f.write(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
        del value  # before producing the next one
        weight_map[t.key] = name
        total += t.nbytes
        if bar is not None:
          bar.update(1)
    try:
      with safe_open(path + ".partial", framework="numpy") as f:
        written = set(f.keys())
    except SafetensorError as e:
      raise ConversionError(f"internal error: {path}: the safetensors library rejects the written file ({e})") from e
    if written != {t.key for t in shard}:
      raise ConversionError(f"internal error: {path}: written tensors differ from the plan")
    os.replace(path + ".partial", path)
  index = {"metadata": {"total_size": total, **(extra_metadata or {})}, "weight_map": weight_map}
  with open(os.path.join(out_dir, SAFETENSORS_INDEX), "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
  return names
