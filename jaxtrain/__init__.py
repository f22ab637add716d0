"""jaxtrain: a JAX training engine for Mixture-of-Experts language models.

    config = jaxtrain.load_config("configs/quickstart.py", overrides=["--config.train.steps=50"])
    summary = jaxtrain.Trainer(config).fit()
    model = jaxtrain.from_pretrained("path/to/hf_dir_or_checkpoint")

Config files start from `jaxtrain.defaults()` (every section with its defaults).
"""

__version__ = "0.1.0"

# Heavy imports (JAX, Orbax, Grain, ml_collections) happen on first use, not on `import jaxtrain`:
# `import jaxtrain.kernels` needs JAX only (a GPU machine without Grain or ml_collections can run
# the kernels).
_LAZY = {
    "ConfigError": "jaxtrain.config",
    "Trainer": "jaxtrain.train.launch",  # the trainer of config.train.method
    "load_config": "jaxtrain.train.run_config",
    "defaults": "jaxtrain.train.run_config",
    "from_pretrained": "jaxtrain.converters",
}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")


__all__ = ["ConfigError", "Trainer", "defaults", "from_pretrained", "load_config"]
