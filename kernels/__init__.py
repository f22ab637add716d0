"""Heavy ops behind one `impl` switch each: "xla" (pure-JAX reference, always available),
faster implementations where they exist, and "auto" (the measured best for the platform).

Pallas kernels run compiled on GPU and in interpret mode anywhere when asked:
`with jaxtrain.kernels.interpret_mode(): ...` or JAXTRAIN_PALLAS_INTERPRET=1. The kernels
themselves live in the modules `flash_attention`, `gmm_pallas` (Triton), `gmm_mosaic` (Mosaic GPU),
`cudnn_attention` and `tokamax_ops` (their functions are not re-exported here, so those names
stay the modules). `fp8` holds the FP8 GEMMs with fine-grained scaling (`fp8.linear`, `fp8.gmm`)."""

from jaxtrain.kernels import fp8
from jaxtrain.kernels.attention import attention, attention_reference
from jaxtrain.kernels.dispatch import implementations, resolve, supports
from jaxtrain.kernels.flash_attention import FlashBlocks
from jaxtrain.kernels.gmm import gmm, gmm_reference, tgmm, tgmm_reference
from jaxtrain.kernels.gmm_pallas import GmmTiling
from jaxtrain.kernels.pallas_backend import block_sizes, interpret_mode, set_block_sizes

__all__ = [
    "attention", "attention_reference", "fp8", "gmm", "gmm_reference", "tgmm", "tgmm_reference",
    "implementations", "resolve", "supports", "FlashBlocks", "GmmTiling", "interpret_mode", "block_sizes", "set_block_sizes",
]
