"""experiments/long_rows.py at tiny row lengths: the compiled step's peak (XLA's buffer
assignment) grows with the row length, and the planner's prediction is printed next to it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def test_long_rows_peak_grows_with_row_length():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "long_rows.py"), "--seqs", "128,512",
                         "--plain-seqs", "", "--steps", "0"], capture_output=True, text=True, timeout=300, cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = {}
  for line in proc.stdout.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if line.startswith("|") and len(cells) > 4 and cells[1] == "chunked":
      rows[int(cells[0].replace(",", ""))] = (float(cells[2].replace(",", "")), float(cells[3].replace(",", "")))
  assert set(rows) == {128, 512}, proc.stdout
  (xla_short, pred_short), (xla_long, pred_long) = rows[128], rows[512]
  assert xla_long > xla_short and pred_long > pred_short, rows
  assert "activation peak (XLA peak - arguments) grows" in proc.stdout
