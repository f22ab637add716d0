"""What the kernels need and what they may use: `import jaxtrain.kernels` works without
ml_collections and grain (the GPU check runs the kernels on machines that lack them), tokamax is
imported only when asked for, and asking for it where it is missing is an error that says how to
install it (at config validation, naming the key, and at the call)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, run_python

BLOCKER = '''
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
  def __init__(self, names):
    self.names = names
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in self.names:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
'''


def test_kernels_import_without_ml_collections_grain_or_tokamax():
  out = run_python(BLOCKER + '''
import json
light, no_tokamax = Blocker({"ml_collections", "grain"}), Blocker({"tokamax"})
sys.meta_path[:0] = [light, no_tokamax]
import jax.numpy as jnp
import jaxtrain.kernels as K
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"ml_collections", "grain", "tokamax", "flax", "optax"})
x, w, sizes = jnp.ones((6, 4)), jnp.ones((2, 4, 3)), jnp.array([2, 4], jnp.int32)
blocked_ok = float(K.gmm(x, w, sizes, impl="blocked").sum()) == 72.0
try:
  K.gmm(x, w, sizes, impl="tokamax")
  call_error = None
except ImportError as e:
  call_error = str(e)
print(json.dumps(dict(loaded=loaded, blocked_ok=blocked_ok, call_error=call_error)))
''')
  result = json.loads(out.strip().splitlines()[-1])
  assert result["loaded"] == [], f"import jaxtrain.kernels pulled in {result['loaded']}"
  assert result["blocked_ok"]
  assert result["call_error"] and "jaxtrain[tokamax]" in result["call_error"], result["call_error"]


def test_config_names_the_key_when_tokamax_is_missing(monkeypatch):
  pytest.importorskip("ml_collections")  # the GPU check may run the kernel tests without it
  import jaxtrain
  from jaxtrain.kernels import tokamax_ops
  monkeypatch.setattr(tokamax_ops, "installed", lambda: False)
  with pytest.raises(jaxtrain.ConfigError, match=r"kernels\.attention.*pip install"):
    jaxtrain.load_config(f"{REPO}/tests/configs/tiny.py", overrides=["--config.kernels.attention=tokamax"])
