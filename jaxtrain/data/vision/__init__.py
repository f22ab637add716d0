"""Vision-language inputs: images and videos -> the token ids and pixel arrays of Qwen3-VL and
InternVL, as transformers' processors make them, without torch; and the multimodal side of the
data pipeline.

Modules: media (Pillow / PyAV reading), resample (Pillow- and torchvision-exact resizing),
qwen_vl and internvl (each family's pixels, frame sampling and placeholder text), processor
(`VisionProcessor`: chat messages -> ids + pixels, `apply_chat_template` like transformers'),
records (vision_chat and llava records -> messages), pieces (documents -> packable pieces),
batch (the multimodal batch contract), synthetic (a generated image / video QA dataset).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VisionProcessor": "jaxtrain.data.vision.processor",
    "ProcessorError": "jaxtrain.data.vision.processor",
    "MediaError": "jaxtrain.data.vision.media",
    "VISION_KEYS": "jaxtrain.data.vision.batch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxtrain.data.vision' has no attribute {name!r}")
