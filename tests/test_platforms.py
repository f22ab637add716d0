"""Accelerators other than CPU/GPU (PJRT plugins): on a platform nobody measured, every `auto`
kernel choice is the pure-JAX reference, said once per op in the log; backend features are
answered by the kernels' table, so the expert exchange picks the padded all_to_all; and a model
runs with exactly the reference numerics. The platform is faked (`kernels.dispatch.platform`)."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from jaxtrain import kernels
from jaxtrain.kernels import dispatch
from jaxtrain.models import factory
from jaxtrain.parallel.moe.select import resolve_exchange
from tests.helpers import random_batch, tiny_moe

FAKE = "fakenpu"


@pytest.fixture
def fake_platform(monkeypatch):
  monkeypatch.setattr(dispatch, "platform", lambda: FAKE)
  monkeypatch.setattr(dispatch, "_warned", set())


def test_auto_falls_back_to_the_references_with_one_log_line(fake_platform, caplog):
  caplog.set_level(logging.WARNING, logger="jaxtrain.kernels")
  for _ in range(3):
    for op in ("attention", "gmm", "tgmm"):
      assert kernels.resolve(op, "auto")[0] == "xla"
  lines = [r.getMessage() for r in caplog.records if "no measured 'auto' choice" in r.getMessage()]
  assert len(lines) == 3 and all(f"platform {FAKE!r}" in line for line in lines)
  assert any(line.startswith("attention:") and "kernels.attention=" in line for line in lines)
  # A named pure-JAX implementation is still honoured; a GPU-only kernel falls back, logged once.
  assert kernels.resolve("attention", "chunked")[0] == "chunked"
  assert kernels.resolve("gmm", "blocked")[0] == "blocked"
  assert kernels.resolve("attention", "cudnn")[0] == "xla"


def test_backend_features_come_from_the_kernels_table(fake_platform):
  assert not kernels.supports("ragged_all_to_all")
  assert kernels.supports("ragged_all_to_all", "gpu") and kernels.supports("ragged_all_to_all", "tpu")
  assert resolve_exchange("auto") == "padded"
  with pytest.raises(ValueError, match=FAKE):
    resolve_exchange("ragged")
  with pytest.raises(ValueError, match="unknown backend feature"):
    kernels.supports("warp_specialization")


def test_a_model_on_an_unknown_platform_computes_exactly_the_reference(monkeypatch):
  batch = random_batch(2, 16, 64, seed=1, docs_per_row=2)

  def logits(impl):
    model = factory.create(tiny_moe(attention_impl=impl, gmm_impl=impl), seed=0)
    forward = jax.jit(lambda ids, seg, pos: model(ids, segment_ids=seg, positions=pos).logits)
    return np.asarray(forward(batch["input_ids"], batch["segment_ids"], batch["positions"]))

  reference = logits("xla")
  auto_on_cpu = logits("auto")  # chunked attention, blocked experts
  monkeypatch.setattr(dispatch, "platform", lambda: FAKE)
  auto_on_fake = logits("auto")
  np.testing.assert_array_equal(auto_on_fake, reference)
  np.testing.assert_allclose(auto_on_cpu, reference, atol=1e-4)
