import json

import numpy as np

from tests.helpers import run_python

SCRIPT = """
import json, jax
from tests.helpers import train_curve
print(json.dumps({{"devices": len(jax.devices()), **train_curve({mesh})}}))
"""


def _curve(mesh: dict, devices: int) -> dict:
  out = run_python(SCRIPT.format(mesh=repr(mesh)), devices=devices)
  return json.loads(out.strip().splitlines()[-1])


def test_fsdp8_matches_single_device_and_shards_params():
  single = _curve({}, devices=1)
  fsdp = _curve({"fsdp": 8}, devices=8)
  assert fsdp["devices"] == 8
  np.testing.assert_allclose(fsdp["loss"], single["loss"], rtol=1e-5)
  np.testing.assert_allclose(fsdp["grad_norm"], single["grad_norm"], rtol=1e-5)
  # ZeRO-3: each device holds a fraction of the parameters.
  assert fsdp["param_bytes_per_device"] < single["param_bytes_per_device"] / 4
