"""Reading Hugging Face weight files without torch (writing: safetensors_write.py).

Reading goes through the `safetensors` library. `SafetensorsFile` opens a file with
`safe_open`, which parses and validates the header (known dtypes, offsets inside the file, sizes
matching shapes, tensors covering the data without gaps or overlaps), and keeps names, shapes
and dtypes. Reads return copies, and nothing stays memory-mapped, so a tensor's bytes stop
counting against the process once the caller drops the array:
- whole tensors: `get_tensor` on a handle opened with the `pread` backend and kept open (an open
  file, not a mapping; `WeightDir` keeps at most `OPEN_FILES` of them). Reopening per read would
  parse the header again each time (~1 us per tensor in the file: ~0.6 ms per read on a
  DeepSeek-V3 shard).
- row ranges (less than the whole tensor): `get_slice(key)[r0:r1]` on a handle opened with the
  default `mmap` backend for this one read (it touches only those rows, and the mapping goes when it is closed; the `pread`
  backend reads the whole tensor to slice it, and an `mmap` handle kept open would keep every
  page read so far mapped and counted in the process's RSS).
`WeightDir` puts a directory's shards behind one key -> tensor interface (sharded safetensors with
`model.safetensors.index.json`, one `model.safetensors`, or `pytorch_model*.bin` through
`torch.load(weights_only=True)`).

What stays hand-written, because the library cannot do it (safetensors 0.8):
- FP8 tensors (F8_E4M3, F8_E5M2): the library's numpy framework looks the dtype up as
  `numpy.float8_e4m3fn`, which numpy does not define (ml_dtypes does), so `get_slice` /
  `get_tensor` raise AttributeError. They are read with a positioned read at the offset the
  library-validated header implies (`TensorInfo.start`). BF16 works through the library: its
  "bfloat16" dtype name resolves once ml_dtypes (imported here) has registered it with numpy.
- Messages for corrupt files: the library's errors name neither the file nor the tensor
  ("incomplete metadata, file not fully covered"), so when it rejects a file the header is
  parsed here, only to say which tensor is cut off or mis-sized.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

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
# Dtypes the library's numpy framework cannot build arrays of (see the module docstring).
_RAW_READ = frozenset({"F8_E4M3", "F8_E5M2"})
OPEN_FILES = 8  # pread handles a WeightDir keeps open (least recently used closed first)
# Names users and configs use for floating dtypes.
FLOAT_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64",
               "fp32": "F32", "bf16": "BF16", "fp16": "F16"}


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


def _header_problems(path: str) -> list[str]:
  """Why `path` is not a valid safetensors file, tensor by tensor where its header parses at all.
  Only called after the library rejected the file, to name what its error message does not."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        return [f"truncated file ({size} bytes, no complete header)"]
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        return [f"header length {n} but the file has {size} bytes (truncated or corrupt)"]
      header = json.loads(f.read(n).decode("utf-8"))
  except (OSError, ValueError):  # unreadable, or not UTF-8 / JSON: the library's message says which
    return []
  if not isinstance(header, dict):
    return []
  problems = []
  base = 8 + n
  for key, entry in header.items():
    if key == "__metadata__":
      continue
    try:
      code, shape, (begin, end) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
      begin, end = int(begin), int(end)
    except (KeyError, TypeError, ValueError):
      problems.append(f"{key}: malformed header entry {entry!r}")
      continue
    if code in DTYPES and end - begin != math.prod(shape) * DTYPES[code].itemsize:
      problems.append(f"{key}: data_offsets {[begin, end]} hold {end - begin} bytes but shape {shape} {code} "
                      f"needs {math.prod(shape) * DTYPES[code].itemsize}")
    elif base + end > size:
      problems.append(f"{key}: data ends at byte {base + end} but the file has only {size} bytes (truncated)")
  return problems


def _rejected(path: str, error: Exception, what: str = "") -> ConversionError:
  return ConversionError(format_problems(f"{path}: {what}invalid safetensors file ({error})", _header_problems(path)))


class SafetensorsFile:
  """One safetensors file, header validated (by the library) on open."""

  def __init__(self, path: str):
    self.path = path
    try:
      with safe_open(path, framework="numpy") as f:
        self.metadata = f.metadata() or {}
        specs = [(key, f.get_slice(key)) for key in f.offset_keys()]
        specs = [(key, s.get_dtype(), tuple(int(d) for d in s.get_shape())) for key, s in specs]
      with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
      size = os.path.getsize(path)
    except SafetensorError as e:
      raise _rejected(path, e) from e
    except OSError as e:
      raise ConversionError(f"{path}: cannot read ({e})") from e
    unsupported = [f"{key}: unsupported dtype {code}" for key, code, _ in specs if code not in DTYPES]
    if unsupported:
      raise ConversionError(format_problems(f"{path}: invalid safetensors file:", unsupported))
    # The library checked that the tensors, in offset order, cover the data section exactly; their
    # offsets are the running sums of their sizes (used only for FP8, see _read_raw).
    self.tensors: dict[str, TensorInfo] = {}
    offset = 8 + header_len
    for key, code, shape in specs:
      nbytes = math.prod(shape) * DTYPES[code].itemsize
      self.tensors[key] = TensorInfo(key, path, shape, code, offset, nbytes)
      offset += nbytes
    if offset != size:
      raise ConversionError(f"{path}: tensors end at byte {offset} but the file has {size} bytes")
    self._handle = None

  def read(self, key: str, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor, or only rows [r0, r1) of its first dimension."""
    info = self.tensors[key]
    if info.dtype in _RAW_READ:
      return self._read_raw(info, rows)
    try:
      if rows is None or (info.shape and tuple(rows) == (0, info.shape[0])):  # the whole tensor
        if self._handle is None:
          self._handle = safe_open(self.path, framework="numpy", backend="pread")
        return self._handle.get_tensor(key)
      with safe_open(self.path, framework="numpy") as f:
        return f.get_slice(key)[rows[0]:rows[1]]
    except SafetensorError as e:  # the file changed since it was opened
      self.close()
      raise _rejected(self.path, e, f"tensor {key}: ") from e
    except OSError as e:
      self.close()
      raise ConversionError(f"{self.path}: tensor {key}: cannot read ({e})") from e

  def close(self) -> None:
    if self._handle is not None:
      self._handle.__exit__(None, None, None)
      self._handle = None

  def _read_raw(self, info: TensorInfo, rows: tuple[int, int] | None) -> np.ndarray:
    shape, start, nbytes = info.shape, info.start, info.nbytes
    if rows is not None:
      row_bytes = nbytes // shape[0] if shape[0] else 0
      shape = (rows[1] - rows[0],) + shape[1:]
      start, nbytes = start + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes
    out = np.empty(shape, DTYPES[info.dtype])
    try:
      with open(self.path, "rb") as f:
        f.seek(start)
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    except OSError as e:
      raise ConversionError(f"{self.path}: tensor {info.key}: cannot read ({e})") from e
    if got != nbytes:
      raise ConversionError(f"{self.path}: tensor {info.key}: read {got} of {nbytes} bytes (file truncated?)")
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
    self._recent: dict[str, None] = {}  # files read from, least recent first
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
    self._recent.pop(info.file, None)
    self._recent[info.file] = None
    while len(self._recent) > OPEN_FILES:
      oldest = next(iter(self._recent))
      del self._recent[oldest]
      getattr(self.files[oldest], "close", lambda: None)()
    return self.files[info.file].read(key, rows)

  def close(self) -> None:
    for f in self.files.values():
      getattr(f, "close", lambda: None)()
    self._recent.clear()

  @property
  def is_torch(self) -> bool:
    return any(isinstance(f, _TorchFile) for f in self.files.values())
