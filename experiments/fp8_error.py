"""FP8 numerics: how far FP8 GEMMs with fine-grained scaling (kernels/fp8.py, 1x128 activation
tiles, 128x128 weight blocks, DeepSeek-V3's scaled backward) land from exact fp32 GEMMs, and what
the fine-grained scales buy over one scale per tensor.

  python experiments/fp8_error.py [--size 1024]

For Gaussian activations and for heavy-tailed ones (row magnitudes spread over e^(3 N(0,1)), the
case per-tile scales are for): the relative (Frobenius) error of the quantized activations, the
median over rows of each row's relative error, and the relative errors of y = x w, dx and dw.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrain.kernels import fp8

HI = jax.lax.Precision.HIGHEST


def rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def row_rel(a, b):
  return float(jnp.median(jnp.linalg.norm(a - b, axis=1) / jnp.linalg.norm(b, axis=1)))


def per_tensor(x):
  scale = jnp.max(jnp.abs(x)) / fp8.E4M3_MAX
  return jnp.clip(x / scale, -fp8.E4M3_MAX, fp8.E4M3_MAX).astype(fp8.E4M3).astype(jnp.float32) * scale


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=int, default=1024)
  args = p.parse_args(argv)
  n = args.size
  rng = np.random.default_rng(0)
  print("| activations | quantization error (tiles / per-tensor) | median row error (tiles / per-tensor) "
        "| y | dx | dw |\n|---|---|---|---|---|---|")
  for name, x in (("Gaussian", rng.normal(size=(n, n))),
                  ("heavy-tailed rows", rng.normal(size=(n, n)) * np.exp(rng.normal(size=(n, 1)) * 3))):
    x = jnp.asarray(x, jnp.float32)
    w = jnp.asarray(rng.normal(size=(n, n)) * 0.02, jnp.float32)
    dy = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: fp8.linear(a, b, impl="emulated"), x, w)
    exact_y, exact_vjp = jax.vjp(lambda a, b: jnp.dot(a, b, precision=HI), x, w)
    (dx, dw), (edx, edw) = vjp(dy), exact_vjp(dy)
    tiles, tensor = fp8.fake_quantize(x, (1,)), per_tensor(x)
    print(f"| {name} | {rel(tiles, x):.4f} / {rel(tensor, x):.4f} | {row_rel(tiles, x):.4f} / {row_rel(tensor, x):.4f} "
          f"| {rel(y, exact_y):.4f} | {rel(dx, edx):.4f} | {rel(dw, edw):.4f} |")


if __name__ == "__main__":
  main()
