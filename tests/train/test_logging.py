"""Metrics reach TensorBoard (and W&B, offline) with the values metrics.jsonl holds, also across
a resume that re-runs logged steps; `train.profile_steps` writes a trace TensorBoard and Perfetto
open."""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import os
import shutil
import struct

import numpy as np
import pytest

import jaxtrain
from jaxtrain.train.metrics import read_metrics

HAVE_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """4 steps (checkpoints at 2 and 4, steps 2-3 profiled); then the step-4 checkpoint is lost
  and the same command resumes from step 2, re-running steps 3 and 4."""
  workdir = str(tmp_path_factory.mktemp("logging") / "run")
  overrides = [f"--config.workdir={workdir}", "--config.train.steps=4", "--config.checkpoint.every=2",
               "--config.checkpoint.async_save=false", "--config.train.profile_steps=(2, 3)"]
  if HAVE_WANDB:
    overrides += ["--config.logging.wandb.enabled=true", "--config.logging.wandb.mode=offline"]
  first = jaxtrain.Trainer(jaxtrain.load_config("tests/configs/tiny.py", overrides)).fit()
  first_records = read_metrics(workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  second = jaxtrain.Trainer(jaxtrain.load_config("tests/configs/tiny.py", overrides)).fit()
  return {"workdir": workdir, "first": first, "second": second, "first_records": first_records}


def _tensorboard(workdir):
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(os.path.join(workdir, "tensorboard"),
                            size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
  acc.Reload()
  return acc


def _expected(records):
  """tag -> {step: value} for scalars, and for per-layer expert-load rows."""
  scalars, rows = {}, {}
  for r in records:
    for key, value in r.items():
      if key == "step" or value is None:
        continue
      if isinstance(value, list):
        for i, item in enumerate(value):
          target = rows if isinstance(item, list) else scalars
          target.setdefault(f"{key}/layer_{i}", {})[r["step"]] = item
      else:
        scalars.setdefault(key, {})[r["step"]] = float(value)
  return scalars, rows


def test_tensorboard_holds_every_metric_of_metrics_jsonl(run):
  records = read_metrics(run["workdir"])
  assert run["second"]["start_step"] == 2
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # steps 3, 4 once: the re-run's
  assert records != run["first_records"]  # the re-run's step-3/4 timings differ from the lost ones
  scalars, rows = _expected(records)
  assert {"loss", "lr", "grad_norm", "tokens_per_sec", "eval_loss", "moe/load_cv/layer_1"} <= set(scalars)
  assert set(rows) == {"moe/expert_load/layer_0", "moe/expert_load/layer_1"}
  acc = _tensorboard(run["workdir"])
  tags = acc.Tags()
  assert set(tags["scalars"]) == set(scalars)
  for tag, by_step in scalars.items():
    events = acc.Scalars(tag)
    # One event per logged step: the first run's events after the lost checkpoint were purged.
    assert sorted(e.step for e in events) == sorted(by_step), tag
    for e in events:
      np.testing.assert_equal(np.float32(e.value), np.float32(by_step[e.step]), err_msg=f"{tag} step {e.step}")
  assert set(tags["histograms"]) == set(rows)
  for tag, by_step in rows.items():
    events = acc.Histograms(tag)
    assert sorted(e.step for e in events) == sorted(by_step)
    for e in events:
      h = e.histogram_value
      share = by_step[e.step]
      np.testing.assert_allclose(h.bucket, share, rtol=1e-6)  # bucket e = expert e's share
      assert list(h.bucket_limit) == [i + 0.5 for i in range(len(share))]
      assert abs(sum(share) - 1) < 1e-5


def test_profile_steps_write_a_trace_for_tensorboard_and_perfetto(run):
  traces = glob.glob(os.path.join(run["workdir"], "tensorboard", "plugins", "profile", "*"))
  assert len(traces) == 1  # steps 2-3 of the first run; the resumed run starts after them
  assert glob.glob(os.path.join(traces[0], "*.xplane.pb"))
  with gzip.open(os.path.join(traces[0], "perfetto_trace.json.gz")) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  assert any("train_step" in str(e.get("name", "")) or "jit" in str(e.get("name", "")) for e in events)


def _wandb_history(path):
  """History rows of an offline .wandb file (LevelDB-log records of wandb Record protos)."""
  from wandb.proto import wandb_internal_pb2 as pb
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  pos, block, chunks, rows = 7, 32768, [], []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # block trailer: padding
      pos += block - pos % block
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    if length == 0 and kind == 0:
      pos += block - pos % block
      continue
    chunks.append(data[pos + 7:pos + 7 + length])
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST
      record = pb.Record()
      record.ParseFromString(b"".join(chunks))
      chunks = []
      if record.WhichOneof("record_type") == "history":
        rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                     for item in record.history.item})
  return rows


@pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (pip install 'jaxtrain[wandb]')")
def test_wandb_offline_run_logs_the_same_values(run):
  files = glob.glob(os.path.join(run["workdir"], "wandb", "offline-run-*", "run-*.wandb"))
  assert len(files) == 2  # the first run and its resumption, one W&B run id
  assert len({os.path.basename(f) for f in files}) == 1
  history = {r["_step"]: r for r in _wandb_history(sorted(files)[0]) if "loss" in r}
  assert sorted(history) == [1, 2, 3, 4]
  scalars, rows = _expected([r for r in run["first_records"] if "loss" in r])
  for tag, by_step in scalars.items():
    for step, value in by_step.items():
      np.testing.assert_allclose(history[step][tag], value, rtol=1e-6, err_msg=f"{tag} step {step}")
  for tag, by_step in rows.items():
    for step, share in by_step.items():
      assert history[step][f"{tag}/_type"] == "histogram"
      np.testing.assert_allclose(history[step][f"{tag}/values"], share, rtol=1e-6)
