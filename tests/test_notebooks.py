"""Every notebook in notebooks/ runs top to bottom (papermill) with the small settings in its
metadata (`metadata.jaxtrain.ci_parameters`, injected after the cell tagged `parameters`); a
failing cell fails the test. A new notebook is picked up by being there."""

from __future__ import annotations

import glob
import os

import nbformat
import pytest

from tests.helpers import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_notebooks_are_found():
  assert len(NOTEBOOKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, tmp_path):
  papermill = pytest.importorskip("papermill")
  nb = nbformat.read(path, as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
  parameters = nb.metadata.get("jaxtrain", {}).get("ci_parameters", {})
  unknown = [k for k in parameters if f"{k} =" not in tagged[0].source]
  assert not unknown, f"ci_parameters {unknown} are not set in the parameters cell"
  out = tmp_path / os.path.basename(path)
  # Runs in a scratch directory: the notebook's relative paths (runs/, hf/, data/) land there.
  papermill.execute_notebook(path, str(out), parameters=parameters, cwd=str(tmp_path), kernel_name="python3",
                             progress_bar=False, request_save_on_cell_execute=False)
  executed = nbformat.read(str(out), as_version=4)
  errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
  images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the notebook should show its plots"
