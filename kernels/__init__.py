"""Heavy ops behind one `impl` switch each: "xla" (pure-JAX reference, always available),
faster implementations where they exist, and "auto" (the measured best for the platform)."""

from jaxtrain.kernels.attention import attention, attention_reference
from jaxtrain.kernels.dispatch import implementations, resolve
from jaxtrain.kernels.gmm import gmm, gmm_blocked, gmm_reference, tgmm, tgmm_reference

__all__ = [
    "attention", "attention_reference", "gmm", "gmm_blocked", "gmm_reference", "tgmm", "tgmm_reference",
    "implementations", "resolve",
]
