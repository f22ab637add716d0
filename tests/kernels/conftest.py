"""Kernel tests run the Pallas kernels against the "xla" references.

Default: interpret mode (any backend, CPU in CI). With JAXTRAIN_PALLAS_INTERPRET=0 on a GPU
(experiments/gpu_check.sh) the same tests run the compiled kernels, fp32 matmuls at full
precision on both sides, and the `compiled_only` tests (realistic default block sizes) run too.
"""

from __future__ import annotations

import os

import jax
import pytest

from jaxtrain.kernels import interpret_mode

COMPILED = os.environ.get("JAXTRAIN_PALLAS_INTERPRET", "").strip() == "0"


def pytest_configure(config):
  config.addinivalue_line("markers", "compiled_only: runs only with compiled Pallas kernels "
                          "(JAXTRAIN_PALLAS_INTERPRET=0 on a GPU)")


def pytest_collection_modifyitems(config, items):
  skip_compiled = pytest.mark.skip(reason="needs compiled Pallas kernels (JAXTRAIN_PALLAS_INTERPRET=0 on a GPU)")
  for item in items:
    if "compiled_only" in item.keywords and not COMPILED:
      item.add_marker(skip_compiled)


@pytest.fixture(autouse=True)
def pallas_mode():
  if COMPILED:
    if jax.default_backend() != "gpu":
      pytest.skip("JAXTRAIN_PALLAS_INTERPRET=0 needs a GPU backend")
    with interpret_mode(False), jax.default_matmul_precision("highest"):
      yield
  else:
    with interpret_mode(True):
      yield
