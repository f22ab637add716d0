"""Loading into a multi-device mesh (4 CPU devices: fsdp=2 x expert=2): parameters arrive in
their target shardings, a forward pass under the mesh matches transformers, and exporting the
sharded parameters reproduces the original tensors bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from tests.converters.conftest import CONFIGS, build_hf, hf_logits_and_loss, tokens
from tests.helpers import xla_flags

from jaxtrain.converters.safetensors_io import WeightDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp
    from flax import nnx
    from ml_collections import ConfigDict
    from jaxtrain.converters import load as load_lib, save_hf, model_config_from_hf
    from jaxtrain.models.config import ModelConfig
    from jaxtrain.parallel.mesh import make_mesh, mesh_context
    from jaxtrain.models import factory
    from jaxtrain.parallel import rules
    hf_dir, out, toks_path, logits_path, threshold = sys.argv[1:6]
    load_lib.HOST_ASSEMBLY_BYTES = int(threshold)
    load_lib.CHUNK_BYTES = 1000  # several row blocks per expert tensor
    assert jax.device_count() == 4
    mesh = make_mesh(ConfigDict({"data": 1, "fsdp": 2, "expert": 2, "sequence": 1, "tensor": 1}))
    cfg = ModelConfig.from_config(model_config_from_hf(hf_dir))
    graphdef, abstract, rest = factory.abstract_model(cfg)
    shardings = rules.param_shardings(abstract, mesh)
    params = load_lib.load_params(hf_dir, cfg, shardings)
    flat = dict(nnx.to_flat_state(params))
    want = dict(nnx.to_flat_state(shardings))
    for path, var in flat.items():
      assert var.get_value().sharding == want[path].get_value(), path
    gate_up = next(v.get_value() for p, v in flat.items() if p[-2:] == ("moe", "gate_up"))
    assert len({str(s.index) for s in gate_up.addressable_shards}) == 4, gate_up.sharding  # split 4 ways
    toks = np.load(toks_path)
    with mesh_context(mesh):
      logits = jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(x).logits)(params, rest, jnp.asarray(toks))
    np.save(logits_path, np.asarray(logits))
    save_hf(params, cfg, out, max_shard_size="30KB")
    print("OK")
""")


def test_sharded_load_forward_and_export(tmp_path):
  model_type, kwargs = CONFIGS["qwen3_moe-interleaved-dense"]
  hf_dir = str(tmp_path / "hf")
  hf = build_hf(model_type, hf_dir, seed=7, **kwargs)
  toks = tokens(2, 16, seed=7)
  ref_logits, _ = hf_logits_and_loss(hf, toks)
  np.save(tmp_path / "toks.npy", toks)
  script = tmp_path / "run.py"
  script.write_text(SCRIPT)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4))
  # Parameters above 20 kB (the experts) are streamed in place, in row blocks, into their sharded arrays.
  r = subprocess.run([sys.executable, str(script), hf_dir, str(tmp_path / "out"), str(tmp_path / "toks.npy"),
                      str(tmp_path / "logits.npy"), "20000"], capture_output=True, text=True, cwd=REPO, env=env,
                     timeout=300)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-4000:]
  logits = np.load(tmp_path / "logits.npy")
  assert np.abs(logits[:, :-1] - ref_logits).max() <= 1e-4
  original, exported = WeightDir(hf_dir), WeightDir(str(tmp_path / "out"))
  assert sorted(original.infos) == sorted(exported.infos)
  for key in original.infos:
    assert exported.read(key).tobytes() == original.read(key).tobytes(), key
