"""resize_torch is torchvision's uint8 resize (torch.nn.functional.interpolate with antialias on
uint8), bit for bit; resize_pil is Pillow's, and the two really differ."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtrain.data.vision.resample import BICUBIC, BILINEAR, resize_pil, resize_torch


@pytest.mark.parametrize("resample,mode", [(BICUBIC, "bicubic"), (BILINEAR, "bilinear")])
def test_resize_torch_is_bit_exact(resample, mode):
  import torch

  rng = np.random.default_rng(0)
  for _ in range(12):
    h, w, out_h, out_w = (int(v) for v in rng.integers(3, 260, 4))
    image = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
    want = torch.nn.functional.interpolate(tensor, size=(out_h, out_w), mode=mode, antialias=True, align_corners=False)
    np.testing.assert_array_equal(resize_torch(image, out_h, out_w, resample), want.permute(0, 2, 3, 1).numpy())


def test_pil_and_torch_resizing_differ():
  image = np.random.default_rng(1).integers(0, 256, (60, 100, 3), dtype=np.uint8)
  diff = np.abs(resize_pil(image, 224, 352).astype(int) - resize_torch(image, 224, 352).astype(int))
  assert 0 < diff.max() <= 2
