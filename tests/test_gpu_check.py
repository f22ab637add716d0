"""experiments/gpu_check.sh runs unattended: with `python3` replaced by a stub (no GPU here), a
missing .whl/ is reported in one line and every step still runs, each under its timeout, with
logs, a summary and the exit status the script promises."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.helpers import REPO

STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in
  *"pip install"*".whl/"*) exit 1 ;;   # no wheels on this machine
  *bench_kernels*) sleep 30 ;;          # a step that overruns its timeout
  *gpu_ep_check*) exit 3 ;;             # a step that fails
esac
exit 0
"""


def test_gpu_check_reports_missing_wheels_once_and_runs_every_step(tmp_path):
  repo = tmp_path / "repo"
  (repo / "experiments").mkdir(parents=True)
  shutil.copy(os.path.join(REPO, "experiments", "gpu_check.sh"), repo / "experiments")
  script = (repo / "experiments" / "gpu_check.sh").read_text().replace("step kernels_bench 100", "step kernels_bench 2")
  (repo / "experiments" / "gpu_check.sh").write_text(script)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python3").write_text(STUB)
  (bin_dir / "python3").chmod(0o755)
  out = tmp_path / "out"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), STUB_LOG=str(tmp_path / "calls"))
  proc = subprocess.run(["bash", str(repo / "experiments" / "gpu_check.sh")], capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  wheel_lines = [line for line in proc.stdout.splitlines() if "could not install .whl" in line]
  assert len(wheel_lines) == 1, proc.stdout
  summary = (out / "summary.txt").read_text()
  steps = ["install", "env", "kernels_tests", "kernels_bench", "train_dsv3_moe", "train_dense_1b", "expert_exchange"]
  for name in steps:
    assert f"[{name}]" in summary, summary
    assert (out / f"{name}.log").exists(), name
  assert "[kernels_bench] TIMEOUT" in summary and "[expert_exchange] FAILED (rc=3)" in summary, summary
  assert "[train_dense_1b] ok" in summary
  assert "failed steps: kernels_bench expert_exchange" in proc.stdout
  calls = (tmp_path / "calls").read_text()
  assert "--out " + str(out) in calls, "benchmark tables go to $OUT"
