"""The benchmark scripts in experiments/ run end to end at tiny sizes and report what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import REPO


def _run(script: str, *args: str) -> str:
  proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", script), *args], capture_output=True,
                        text=True, timeout=600, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout


def _table_row(text: str, first_cell: str) -> list[str]:
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and cells[0] == first_cell:
      return cells
  raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


def test_bench_train_compares_jaxtrain_with_torch_eager():
  out = _run("bench_train.py", "--frameworks", "jaxtrain,torch-eager", "--steps", "2", "--warmup", "1",
             "--batch", "2", "--seq", "32")
  jax_row, torch_row = _table_row(out, "jaxtrain"), _table_row(out, "torch-eager")
  jax_tps, torch_tps = (float(r[1].replace(",", "")) for r in (jax_row, torch_row))
  assert jax_tps > 0 and torch_tps > 0
  assert float(jax_row[4]) > 0  # compile seconds measured
  ratio = float(jax_row[6].rstrip("x"))
  # the table prints tokens/s rounded to integers: the ratio must lie within that rounding
  low, high = (jax_tps - 0.5) / (torch_tps + 0.5), (jax_tps + 0.5) / max(torch_tps - 0.5, 1e-9)
  assert low - 0.01 <= ratio <= high + 0.01, (ratio, jax_tps, torch_tps)
  assert torch_row[6] == "1.00x"


def test_bench_train_vlm_preset_times_the_vision_tower():
  out = _run("bench_train.py", "--preset", "cpu-vlm", "--frameworks", "jaxtrain,torch-eager", "--steps", "1",
             "--warmup", "1", "--batch", "2", "--seq", "96")
  jax_row, torch_row = _table_row(out, "jaxtrain"), _table_row(out, "torch-eager")
  assert float(jax_row[1].replace(",", "")) > 0 and float(torch_row[1].replace(",", "")) > 0
  vision, blocks = re.fullmatch(r"([\d.]+) \(([\d.]+)\)", jax_row[7]).groups()
  # timed separately from the step, so only their presence is checked (timings are not asserted)
  assert float(blocks) > 0 and float(vision) > 0 and float(jax_row[2]) > 0
  assert float(torch_row[7]) > 0


def test_profile_step_attributes_time_to_experts_and_attention():
  out = _run("profile_step.py", "--batch", "2", "--seq", "32", "--steps", "1")
  assert re.search(r"[\d,]+ minor page faults per step", out), out
  for label in ("MoE expert matmuls", "attention core (QK^T, PV, softmax)"):
    row = _table_row(out, label)
    assert float(row[1]) > 0 and float(row[2].rstrip("%")) > 0, row
  total = sum(float(_table_row(out, line.split("|")[1].strip())[2].rstrip("%"))
              for line in out.splitlines() if line.startswith("| ") and "%" in line)
  assert abs(total - 100.0) < 0.5, out


def test_bench_vision_times_both_processors():
  out = _run("bench_vision.py", "--repeats", "1", "--skip-transformers")  # importing transformers: 10-25 s
  for kind in ("qwen3_vl", "internvl"):
    row = _table_row(out, kind)
    assert all(float(cell) > 0 for cell in row[2:4]) and row[4] == "n/a", row
  assert float(_table_row(out.split("| processor | video |")[1], "internvl")[3]) > 0


def test_plot_run_draws_the_loss_curve_of_a_workdir(tmp_path):
  import importlib.util
  import json

  import jaxtrain
  from jaxtrain.config import to_json
  spec = importlib.util.spec_from_file_location("plot_run", os.path.join(REPO, "experiments", "plot_run.py"))
  plot_run = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(plot_run)
  config = jaxtrain.defaults()
  (tmp_path / "config.json").write_text(to_json(config))
  records = [{"step": s, "loss": 5.0 / s, "lr": 1e-3} for s in (1, 2, 3)] + [{"step": 3, "eval_loss": 2.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "loss.png"
  summary = plot_run.plot(str(tmp_path), str(out), "title")
  assert summary == {"steps": 3, "final_train_loss": 5.0 / 3, "eval_loss": 2.5, "unigram_loss": None}
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
