"""bf16 logits of every registered family against `transformers` in bf16 (vision-language families:
text-only), from each family's tiny example with random weights (fp32 checkpoint; both sides load it as bf16 parameters and compute
in bf16).

Tolerance. Two bf16 implementations round at different points (fused vs separate ops, where
softmax and norms go through fp32), so they need not agree bit for bit; what must hold is that
ours is as close to the exact (fp32) logits as transformers' own bf16 run is:
  max |ours_bf16 - hf_fp32| <= 2 * max |hf_bf16 - hf_fp32| + 2^-7 * max |logit|
and the two bf16 runs within the sum of their errors (3x hf's own, plus the same floor; 2^-7 is
one bf16 ulp relative to the largest logit). Measured errors are printed (`pytest -s`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.conftest import build_hf, jax_logits_and_loss, tokens
from tests.models import hf_vlm

import jaxtrain
from jaxtrain.converters.families import FAMILIES

torch = pytest.importorskip("torch")


def hf_logits(model, toks):
  with torch.no_grad():
    return model(torch.tensor(toks, dtype=torch.long)).logits.float().numpy()[:, :-1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_bf16_logits_match_transformers_bf16(family, tmp_path):
  hf_dir = str(tmp_path / "hf")
  if FAMILIES[family].multimodal:  # text-only logits of the language model (pixels: tests/models/test_vlm.py)
    hf_fp32 = hf_vlm.build_hf_vlm(family, hf_dir, seed=11)
  else:
    hf_fp32 = build_hf(family, hf_dir, seed=11, **FAMILIES[family].example)
  toks = tokens(2, 17, seed=5)
  exact = hf_logits(hf_fp32, toks)
  hf_bf16 = hf_logits(hf_fp32.to(torch.bfloat16), toks)
  ours, _ = jax_logits_and_loss(jaxtrain.from_pretrained(hf_dir, dtype="bfloat16"), toks)
  hf_bf16, ours = hf_bf16.astype(np.float32), ours.astype(np.float32)
  floor = 2.0 ** -7 * np.abs(exact).max()
  hf_err, our_err = np.abs(hf_bf16 - exact).max(), np.abs(ours - exact).max()
  between = np.abs(ours - hf_bf16).max()
  print(f"BF16 {family}: max|logit| {np.abs(exact).max():.3g}, transformers bf16 err {hf_err:.3g}, "
        f"ours {our_err:.3g}, ours vs transformers {between:.3g}")
  assert hf_err > 0 and our_err > 0, "both sides really computed in bf16"
  assert our_err <= 2 * hf_err + floor, family
  assert between <= 3 * hf_err + floor, family
