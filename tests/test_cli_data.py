"""Every source kind and format reaches a training step through the CLI, and the SFT example
config trains."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow
TINY = os.path.join(REPO, "tests", "configs", "tiny.py")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxtrain.main", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _write_sources(root) -> dict:
  import pyarrow as pa
  import pyarrow.parquet as pq

  texts = [f"document {i}: " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(40)]
  (root / "texts").mkdir()
  for i, t in enumerate(texts[:10]):
    (root / "texts" / f"{i}.txt").write_text(t)
  (root / "plain.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps({"text": t}) for t in texts).encode()))
  chat = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {i}."},
                        {"role": "assistant", "content": f"{i}."}]} for i in range(30)]
  (root / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in chat))
  pq.write_table(pa.table({"prompt": [f"2+{i}=" for i in range(30)], "completion": [str(2 + i) for i in range(30)]}),
                 root / "pc.parquet")
  table = pa.table({"instruction": [f"Repeat {i}" for i in range(30)], "input": [""] * 30,
                    "output": [str(i) for i in range(30)]})
  with pa.OSFile(str(root / "alpaca.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
    writer.write_table(table)
  np.save(root / "tokens.npy", np.random.default_rng(0).integers(0, 256, 4000).astype(np.int32))
  return {
      "stdlib": {"kind": "python_stdlib"},
      "textdir": {"kind": "text", "path": str(root / "texts"), "holdout": "none"},
      "jsonl_gz": {"kind": "jsonl", "path": str(root / "plain.jsonl.gz"), "holdout": "none"},
      "chat": {"kind": "jsonl", "format": "chat", "path": str(root / "chat.jsonl"), "holdout": "none"},
      "prompt_completion": {"kind": "parquet", "format": "prompt_completion", "path": str(root / "pc.parquet"),
                            "holdout": "none"},
      "alpaca": {"kind": "arrow", "format": "alpaca", "path": str(root / "alpaca.arrow"), "holdout": "none"},
      "tokens": {"kind": "tokens", "path": str(root / "tokens.npy"), "holdout": "none"},
  }


def test_every_source_kind_and_format_trains_through_the_cli(tmp_path):
  sources = _write_sources(tmp_path)
  config = tmp_path / "mix.py"
  config.write_text("from tests.configs.tiny import get_config as tiny\n\n"
                    "def get_config():\n  c = tiny()\n"
                    f"  c.data.sources = {sources!r}\n"
                    "  c.data.eval_fraction = 0.5\n  c.data.overlong = 'truncate'\n  return c\n")
  proc = _cli("--config", str(config), f"--config.workdir={tmp_path / 'run'}", "--config.train.steps=3",
              "--config.train.global_batch=16", "--config.checkpoint.enabled=false", "--config.eval.batches=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  per_source = re.search(r"documents per source: (.*)", proc.stderr).group(1)
  counts = dict(item.split("=") for item in per_source.split(", "))
  assert sorted(counts) == sorted(sources)
  assert all(int(n) > 0 for n in counts.values()), counts


def test_sft_example_config_trains(tmp_path):
  proc = _cli("--config", os.path.join(REPO, "configs", "sft_example.py"), f"--config.workdir={tmp_path}",
              "--config.train.steps=2", "--config.train.global_batch=2", "--config.data.seq_len=512",
              "--config.model.num_layers=1", "--config.checkpoint.enabled=false", "--config.sample.enabled=false",
              "--config.train.log_every=1", "--config.eval.batches=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in steps if "loss" in r] == [1, 2]
  assert "held-out loss" in proc.stdout
