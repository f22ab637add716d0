"""The safetensors reader and writer (`converters/safetensors_io.py`): every dtype the converters
use survives a write/read round trip and agrees with the `safetensors` library in both
directions, row ranges read only their rows, reads leave nothing mapped, the writer holds one
tensor at a time, and broken files fail with a ConversionError naming the file and tensor."""

from __future__ import annotations

import gc
import json
import os
import struct
import weakref

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from jaxtrain.converters import ConversionError
from jaxtrain.converters.safetensors_io import DTYPES, SAFETENSORS_INDEX, SafetensorsFile, WeightDir, numpy_dtype
from jaxtrain.converters.safetensors_write import OutTensor, parse_size, write_sharded


def sample_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for code, dtype in DTYPES.items():
    shape = (7, 3, 2) if code in ("F32", "BF16", "F8_E4M3") else (5, 4)
    if dtype.kind == "b":
      value = rng.integers(0, 2, shape).astype(bool)
    elif dtype.kind in "iu":
      value = rng.integers(0, 100, shape).astype(dtype)
    else:
      value = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    out[f"t.{code.lower()}"] = value
  out["scalar"] = np.array(2.5, np.float32)
  out["empty"] = np.zeros((0, 3), ml_dtypes.bfloat16)
  out["vector"] = np.arange(11, dtype=np.float16)
  return out


def assert_same(got: np.ndarray, want: np.ndarray, what: str):
  assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
  assert got.tobytes() == want.tobytes(), what


def write(out_dir: str, tensors: dict[str, np.ndarray], max_shard_bytes: int = 10**9) -> list[str]:
  planned = [OutTensor(k, v.shape, v.dtype) for k, v in tensors.items()]
  return write_sharded(out_dir, planned, lambda k: tensors[k], max_shard_bytes=max_shard_bytes,
                       extra_metadata={"note": "test"})


def test_reads_library_written_files_whole_and_by_rows(tmp_path):
  tensors = sample_tensors()
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  w = WeightDir(str(tmp_path))
  assert sorted(w.infos) == sorted(tensors) and not w.is_torch and w.directory == str(tmp_path)
  for key, want in tensors.items():
    info = w.infos[key]
    assert (info.key, info.file, info.shape, info.dtype) == (key, str(tmp_path / "model.safetensors"), want.shape,
                                                             {v: k for k, v in DTYPES.items()}[want.dtype])
    got = w.read(key)
    assert_same(got, want, key)
    assert got.flags.writeable and got.flags.c_contiguous
    if want.ndim and want.shape[0] >= 4:
      for r0, r1 in ((0, 1), (1, 4), (want.shape[0] - 1, want.shape[0]), (2, 2)):
        assert_same(w.read(key, rows=(r0, r1)), want[r0:r1], f"{key}[{r0}:{r1}]")


def test_written_shards_match_the_library(tmp_path):
  tensors = sample_tensors(1)
  out = str(tmp_path / "out")
  os.makedirs(out)
  names = write(out, tensors, max_shard_bytes=200)
  assert len(names) > 2 and names[0] == f"model-00001-of-{len(names):05d}.safetensors"
  with open(os.path.join(out, SAFETENSORS_INDEX)) as f:
    index = json.load(f)
  assert sorted(index["weight_map"]) == sorted(tensors) and set(index["weight_map"].values()) == set(names)
  assert index["metadata"] == {"total_size": sum(v.nbytes for v in tensors.values()), "note": "test"}
  assert not [n for n in os.listdir(out) if n.endswith(".partial")]
  fp8 = {k for k, v in tensors.items() if v.dtype in (DTYPES["F8_E4M3"], DTYPES["F8_E5M2"])}
  for name in names:
    path = os.path.join(out, name)
    with safe_open(path, framework="numpy") as f:
      assert f.metadata() == {"format": "pt"}
      keys = set(f.keys())
      # (The library's numpy framework cannot build FP8 arrays; those are compared below.)
      for key in keys - fp8:
        assert_same(f.get_tensor(key), tensors[key], key)
    assert keys == {k for k, n in index["weight_map"].items() if n == name}
  w = WeightDir(out)
  for key, want in tensors.items():
    assert_same(w.read(key), want, key)


def test_library_reads_single_shard_export(tmp_path):
  tensors = {k: v for k, v in sample_tensors(2).items() if "f8" not in k}  # (no FP8 in the library's numpy)
  write(str(tmp_path), tensors)
  loaded = load_file(str(tmp_path / "model-00001-of-00001.safetensors"))
  for key, want in tensors.items():
    assert_same(loaded[key], want, key)


def test_reads_leave_nothing_mapped(tmp_path):
  path = str(tmp_path / "model.safetensors")
  big = np.arange(512 * 1024, dtype=np.float32).reshape(1024, 512)
  save_file({"big": big, "fp8": big[:64].astype(ml_dtypes.float8_e4m3fn)}, path)
  w = WeightDir(str(tmp_path))
  whole, rows, fp8 = w.read("big"), w.read("big", rows=(100, 300)), w.read("fp8", rows=(3, 9))
  with open("/proc/self/maps") as f:
    assert not [line for line in f if path in line]
  # The arrays are copies: overwriting and deleting the file does not change them.
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) - big.nbytes)
    f.write(b"\xff" * 4096)
  os.remove(path)
  np.testing.assert_array_equal(whole, big)
  np.testing.assert_array_equal(rows, big[100:300])
  assert_same(fp8, big[3:9].astype(ml_dtypes.float8_e4m3fn), "fp8 rows")


def test_writer_holds_one_tensor_at_a_time(tmp_path):
  tensors = sample_tensors(3)
  planned = [OutTensor(k, v.shape, v.dtype) for k, v in tensors.items()]
  produced: list[weakref.ref] = []
  calls = []

  def produce(key):
    gc.collect()
    assert all(r() is None for r in produced), "the writer still holds an earlier tensor"
    calls.append(key)
    value = tensors[key].copy()
    produced.append(weakref.ref(value))
    return value

  write_sharded(str(tmp_path), planned, produce, max_shard_bytes=150)
  assert calls == list(tensors)  # once each, in plan order


def test_writer_rejects_a_tensor_that_does_not_match_the_plan(tmp_path):
  planned = [OutTensor("a", (2, 3), np.dtype(np.float32))]
  with pytest.raises(ConversionError, match="internal error writing a"):
    write_sharded(str(tmp_path), planned, lambda k: np.zeros((3, 2), np.float32), max_shard_bytes=100)


def test_sizes_and_dtype_names():
  assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
  assert numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16) and numpy_dtype("F32") == np.dtype(np.float32)
  with pytest.raises(ConversionError):
    parse_size("lots")
  with pytest.raises(ConversionError):
    numpy_dtype("int4")


# -- broken files ------------------------------------------------------------------------------

def raw_file(path: str, header: dict, data: bytes) -> None:
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw + data)


def good_file(path: str) -> None:
  save_file({"a.weight": np.ones((4, 4), np.float32), "b.weight": np.ones((8,), np.float32)}, path)


def error_of(path: str) -> str:
  with pytest.raises(ConversionError) as e:
    SafetensorsFile(path)
  assert path in str(e.value)
  return str(e.value)


def test_truncated_data_names_the_tensor(tmp_path):
  path = str(tmp_path / "x.safetensors")
  good_file(path)
  os.truncate(path, os.path.getsize(path) - 8)
  msg = error_of(path)
  assert "truncated" in msg and "b.weight" in msg and "a.weight" not in msg


@pytest.mark.parametrize("size", [0, 5, 30])
def test_truncated_header(tmp_path, size):
  path = str(tmp_path / "x.safetensors")
  good_file(path)
  os.truncate(path, size)
  assert "truncated" in error_of(path)


def test_mis_sized_tensor_is_named(tmp_path):
  path = str(tmp_path / "x.safetensors")
  raw_file(path, {"a.weight": {"dtype": "F32", "shape": [4, 5], "data_offsets": [0, 64]}}, b"\0" * 64)
  msg = error_of(path)
  assert "a.weight" in msg and "[4, 5]" in msg and "needs 80" in msg


def test_corrupt_header_and_unsupported_dtype(tmp_path):
  path = str(tmp_path / "x.safetensors")
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 10) + b"{not json}")
  assert "JSON" in error_of(path)
  raw_file(path, {"a.weight": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
  msg = error_of(path)
  assert "a.weight" in msg and "unsupported dtype U16" in msg


@pytest.mark.parametrize("read_first", [False, True])
def test_file_changed_after_opening(tmp_path, read_first):
  path = str(tmp_path / "model.safetensors")
  save_file({"a.weight": np.ones((4, 4), np.float32), "z.weight": np.ones((64,), np.float32),
             "q.weight": np.ones((4, 4), ml_dtypes.float8_e4m3fn)}, path)
  w = WeightDir(str(tmp_path))
  if read_first:  # the file's read handle is already open
    w.read("a.weight")
  os.truncate(path, os.path.getsize(path) - 20)
  for key, rows in (("z.weight", None), ("z.weight", (60, 64)), ("q.weight", None)):
    with pytest.raises(ConversionError) as e:
      w.read(key, rows)
    assert path in str(e.value) and key in str(e.value) and "truncated" in str(e.value), str(e.value)
  os.remove(path)
  with pytest.raises(ConversionError, match="cannot read"):
    w.read("a.weight")


def test_open_files_are_bounded(tmp_path, monkeypatch):
  from jaxtrain.converters import safetensors_io
  monkeypatch.setattr(safetensors_io, "OPEN_FILES", 3)
  tensors = {f"t{i}": np.full((4,), i, np.float32) for i in range(10)}
  write(str(tmp_path), tensors, max_shard_bytes=16)  # one tensor per shard
  w = WeightDir(str(tmp_path))

  def open_shards():
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if str(tmp_path) in os.path.realpath(f"/proc/self/fd/{fd}"))

  for key, want in tensors.items():
    assert_same(w.read(key), want, key)
    assert open_shards() <= 3
  w.close()
  assert open_shards() == 0
