import numpy as np


def test_fsdp8_matches_single_device_and_shards_params(curves):
  """fsdp=8 on 8 simulated devices vs one device (conftest.py's MATRIX run, same process)."""
  single, fsdp = curves["matrix"]["ref"], curves["matrix"]["fsdp8"]
  assert fsdp["devices"] == 8
  np.testing.assert_allclose(fsdp["loss"], single["loss"], rtol=1e-5)
  np.testing.assert_allclose(fsdp["grad_norm"], single["grad_norm"], rtol=1e-5)
  # ZeRO-3: each device holds a fraction of the parameters.
  assert fsdp["param_bytes_per_device"] < single["param_bytes_per_device"] / 4
