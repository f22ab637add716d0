"""Parallelism acceptance: FSDP, expert parallel (padded exchange; the ragged exchange's offsets
through an all-gather stand-in, since XLA:CPU lacks ragged-all-to-all), Ulysses sequence
parallel, tensor parallel, on 8 simulated CPU devices, against a 1-device run in the same
process (5 train steps, fp32, losses and gradient norms within 1e-5 relative). The runs
themselves are conftest.py's `curves` fixture (MATRIX and EXTRAS there).
"""

from __future__ import annotations

import numpy as np


def _assert_matches(run: dict, ref: dict, name: str):
  np.testing.assert_allclose(run["loss"], ref["loss"], rtol=1e-5, err_msg=f"{name}: loss")
  np.testing.assert_allclose(run["grad_norm"], ref["grad_norm"], rtol=1e-5, err_msg=f"{name}: grad_norm")


def test_meshes_match_single_device(curves):
  m, x = curves["matrix"], curves["extras"]
  ref = m["ref"]
  assert len(ref["loss"]) == 5 and np.all(np.isfinite(ref["loss"]))
  for name, run in m.items():
    if name != "ref":
      assert run["devices"] == 8
      _assert_matches(run, ref, name)
  for name, run in x.items():
    if name.startswith("pallas"):
      _assert_matches(run, x["pallas_ref"], name)
    else:
      _assert_matches(run, ref, name)
  # The expert meshes really exchange tokens: padded = all_to_all (forward and backward),
  # emulated ragged = all-gathers; without an expert split there is no token all_to_all.
  assert m["fsdp2_expert4"]["all_to_all"] >= 4 and m["fsdp2_expert2_seq2"]["all_to_all"] >= 4
  assert m["fsdp8"]["all_to_all"] == 0 and m["data2_fsdp4"]["all_to_all"] == 0
  assert m["fsdp4_seq2"]["all_to_all"] >= 4  # Ulysses: q, k, v and the output, both ways
  assert x["ragged_emulated_expert2_seq2_tensor2"]["all_gather"] > m["fsdp2_expert2_seq2"]["all_gather"]
  # ZeRO-3: per-device parameter bytes fall as fsdp grows.
  assert m["fsdp8"]["param_bytes_per_device"] < m["data2_fsdp4"]["param_bytes_per_device"] \
      < ref["param_bytes_per_device"] / 3
