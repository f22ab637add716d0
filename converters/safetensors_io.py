"""Reading and writing Hugging Face weight files without torch.

Reading: a safetensors file is an 8-byte little-endian header length, a JSON header
(`{name: {dtype, shape, data_offsets}}`) and the raw bytes. `SafetensorsFile` parses and
validates the header (offsets inside the file, sizes matching shapes) when opened, then reads
one tensor at a time with positioned reads into a fresh numpy buffer. Nothing is memory-mapped,
so a tensor's bytes stop counting against the process once the caller drops the array.
`WeightDir` puts a directory's shards behind one key -> tensor interface (sharded safetensors
with `model.safetensors.index.json`, one `model.safetensors`, or `pytorch_model*.bin` through
`torch.load(weights_only=True)`).

Writing: `write_sharded` plans the shard files from (key, shape, dtype) alone, writes each
header first and then streams tensors one by one from a callback, so at most one tensor is in
host memory; it finishes with `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable

import ml_dtypes
import numpy as np

from jaxtrain.converters.errors import ConversionError, format_problems

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = "pytorch_model.bin"

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Names users and configs use for floating dtypes.
FLOAT_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64",
               "fp32": "F32", "bf16": "BF16", "fp16": "F16"}
_MAX_HEADER = 256 * 1024 * 1024


def numpy_dtype(name: str) -> np.dtype:
  """'float32' / 'bfloat16' / 'F32' / ... -> numpy dtype."""
  code = FLOAT_NAMES.get(name, name)
  if code not in DTYPES:
    raise ConversionError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16")
  return DTYPES[code]


@dataclass(frozen=True)
class TensorInfo:
  key: str
  file: str
  shape: tuple[int, ...]
  dtype: str  # safetensors dtype code (F32, BF16, ...)
  start: int = 0  # absolute byte offset in the file (safetensors only)
  nbytes: int = 0


class SafetensorsFile:
  """One safetensors file, header validated on open."""

  def __init__(self, path: str):
    self.path = path
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
          raise ConversionError(f"{path}: corrupt or truncated safetensors file (header length {n} "
                                f"but the file has {size} bytes)")
        raw = f.read(n)
    except OSError as e:
      raise ConversionError(f"{path}: cannot read ({e})") from e
    try:
      header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ConversionError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
      raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    self.metadata = header.pop("__metadata__", None) or {}
    base = 8 + n
    self.tensors: dict[str, TensorInfo] = {}
    problems = []
    for key, entry in header.items():
      try:
        code, shape, (begin, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
      except (KeyError, TypeError, ValueError):
        problems.append(f"{key}: malformed header entry {entry!r}")
        continue
      if code not in DTYPES:
        problems.append(f"{key}: unsupported dtype {code}")
        continue
      nbytes = math.prod(shape) * DTYPES[code].itemsize
      if end - begin != nbytes or begin < 0:
        problems.append(f"{key}: data_offsets {[begin, end]} hold {end - begin} bytes but shape {list(shape)} "
                        f"{code} needs {nbytes}")
        continue
      if base + end > size:
        problems.append(f"{key}: data ends at byte {base + end} but the file has only {size} bytes (truncated)")
        continue
      self.tensors[key] = TensorInfo(key, path, shape, code, base + begin, nbytes)
    if problems:
      raise ConversionError(format_problems(f"{path}: invalid safetensors file:", problems))

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor, or only rows [r0, r1) of its first dimension."""
    info = self.tensors[key]
    shape, start, nbytes = info.shape, info.start, info.nbytes
    if rows is not None:
      row_bytes = nbytes // shape[0] if shape[0] else 0
      shape = (rows[1] - rows[0],) + shape[1:]
      start, nbytes = start + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    out = np.empty(shape, DTYPES[info.dtype])
    buf = memoryview(out.reshape(-1).view(np.uint8))
    with open(self.path, "rb") as f:
      f.seek(start)
      got = f.readinto(buf)
    if got != nbytes:
      raise ConversionError(f"{self.path}: tensor {key}: read {got} of {nbytes} bytes (file truncated?)")
    return out


class _TorchFile:
  """One pytorch_model*.bin, loaded with torch.load(weights_only=True) (memory-mapped where the
  file format allows)."""

  def __init__(self, path: str):
    try:
      import torch
    except ImportError as e:
      raise ConversionError(f"{path}: reading pytorch_model*.bin files needs torch (pip install torch), "
                            f"or convert the checkpoint to safetensors") from e
    self.path = path
    try:
      try:
        self.state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except RuntimeError:
        self.state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
      raise ConversionError(f"{path}: cannot load with torch.load(weights_only=True): {e}") from e
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    self.tensors = {}
    for key, t in self.state.items():
      if not hasattr(t, "dtype") or t.dtype not in names:
        raise ConversionError(f"{path}: {key}: unsupported entry {type(t).__name__} {getattr(t, 'dtype', '')}")
      self.tensors[key] = TensorInfo(key, path, tuple(t.shape), names[t.dtype], 0, t.numel() * t.element_size())

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    import torch
    t = self.state[key]
    t = (t if rows is None else t[rows[0]:rows[1]]).contiguous()
    if t.dtype == torch.bfloat16:
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


class WeightDir:
  """All weight tensors of a Hugging Face directory behind `infos` / `read(key)`."""

  def __init__(self, directory: str):
    self.directory = directory
    self.files: dict[str, SafetensorsFile | _TorchFile] = {}
    self.infos: dict[str, TensorInfo] = {}
    index_path = os.path.join(directory, SAFETENSORS_INDEX)
    if os.path.exists(index_path):
      self._from_index(index_path, SafetensorsFile)
    elif os.path.exists(os.path.join(directory, SAFETENSORS_SINGLE)):
      self._add(SafetensorsFile(os.path.join(directory, SAFETENSORS_SINGLE)))
    elif os.path.exists(os.path.join(directory, TORCH_INDEX)):
      self._from_index(os.path.join(directory, TORCH_INDEX), _TorchFile)
    elif os.path.exists(os.path.join(directory, TORCH_SINGLE)):
      self._add(_TorchFile(os.path.join(directory, TORCH_SINGLE)))
    else:
      raise ConversionError(f"{directory}: no weights found (expected {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, "
                            f"{TORCH_INDEX} or {TORCH_SINGLE})")

  def _add(self, f) -> None:
    self.files[f.path] = f
    for key, info in f.tensors.items():
      if key in self.infos:
        raise ConversionError(f"{f.path}: tensor {key} also appears in {self.infos[key].file}")
      self.infos[key] = info

  def _from_index(self, index_path: str, opener) -> None:
    try:
      with open(index_path) as fh:
        weight_map = json.load(fh)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
      raise ConversionError(f"{index_path}: cannot read the weight map ({e})") from e
    by_file: dict[str, list[str]] = {}
    for key, name in weight_map.items():
      by_file.setdefault(name, []).append(key)
    missing = [f"{name} (holds {len(keys)} tensors, e.g. {keys[0]})" for name, keys in sorted(by_file.items())
               if not os.path.exists(os.path.join(self.directory, name))]
    if missing:
      raise ConversionError(format_problems(f"{index_path}: shard files named in the index are missing:", missing))
    problems = []
    for name, keys in sorted(by_file.items()):
      f = opener(os.path.join(self.directory, name))
      self._add(f)
      problems += [f"{k}: listed in the index under {name} but not in that file" for k in keys if k not in f.tensors]
    if problems:
      raise ConversionError(format_problems(f"{index_path}: index and shards disagree:", problems))

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    info = self.infos[key]
    return self.files[info.file].read(key, rows)

  @property
  def is_torch(self) -> bool:
    return any(isinstance(f, _TorchFile) for f in self.files.values())


# -- writing ---------------------------------------------------------------------------------

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
        weight_map[t.key] = name
        total += t.nbytes
        if bar is not None:
          bar.update(1)
    os.replace(path + ".partial", path)
  index = {"metadata": {"total_size": total, **(extra_metadata or {})}, "weight_map": weight_map}
  with open(os.path.join(out_dir, SAFETENSORS_INDEX), "w") as f:
    json.dump(index, f, indent=2)
    f.write("\n")
  return names
