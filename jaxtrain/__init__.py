"""jaxtrain: a JAX training engine for Mixture-of-Experts language models.

    config = jaxtrain.load_config("configs/quickstart.py", overrides=["--config.train.steps=50"])
    summary = jaxtrain.Trainer(config).fit()
    model = jaxtrain.from_pretrained("path/to/hf_dir_or_checkpoint")
"""

from jaxtrain.config import ConfigError, load_config

__version__ = "0.1.0"


def __getattr__(name):
  # Heavy imports (JAX, Orbax, Grain) happen on first use, not on `import jaxtrain`.
  if name == "Trainer":
    from jaxtrain.train.trainer import Trainer
    return Trainer
  if name == "from_pretrained":
    from jaxtrain.converters import from_pretrained
    return from_pretrained
  raise AttributeError(f"module 'jaxtrain' has no attribute {name!r}")


__all__ = ["ConfigError", "Trainer", "from_pretrained", "load_config"]
