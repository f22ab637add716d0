"""Vision-language models on 8 simulated devices (fsdp, expert and data axes) match one device:
2 train steps of the tiny Qwen3-VL-MoE-like and InternVL-like models on synthetic multimodal
batches (pipeline contract -> per-row layout -> sharded arrays), losses and gradient norms
within 1e-5 relative, with the vision tower's parameters sharded over fsdp."""

from __future__ import annotations

import json

import numpy as np

from tests.helpers import run_python

CODE = """
import json
from tests.vlm_data import train_curve
out = {}
for tower, meshes in (("rope_vit", {"fsdp2_expert4": {"fsdp": 2, "expert": 4}}),
                      ("cls_vit", {"data2_fsdp2_expert2": {"data": 2, "fsdp": 2, "expert": 2}})):
  out[tower] = {"ref": train_curve(tower, {}, steps=2, devices=1)}
  for name, mesh in meshes.items():
    out[tower][name] = train_curve(tower, mesh, steps=2)
print("RESULT" + json.dumps(out))
"""


def test_vlm_meshes_match_single_device():
  out = run_python(CODE, devices=8, timeout=900)
  result = json.loads(out.split("RESULT", 1)[1])
  for tower, runs in result.items():
    ref = runs.pop("ref")
    assert len(ref["loss"]) == 2 and np.all(np.isfinite(ref["loss"])), (tower, ref)
    for name, run in runs.items():
      np.testing.assert_allclose(run["loss"], ref["loss"], rtol=1e-5, err_msg=f"{tower} {name}: loss")
      np.testing.assert_allclose(run["grad_norm"], ref["grad_norm"], rtol=1e-5, err_msg=f"{tower} {name}: grad")
      assert run["vision_params_sharded"], f"{tower} {name}: the vision tower's parameters are not sharded"
