"""transformers' own Qwen3-VL and InternVL processors as the oracle, in a venv without torchvision.

transformers' video processors (and its "fast" image processors) are torchvision-only, and
PyPI's torchvision does not import beside the local CPU build of torch. They use exactly three
torchvision kernels: `resize` (on uint8 CPU tensors with antialias: `torch.nn.functional.interpolate`
on the uint8 tensor), `normalize` ((x - mean) / std) and `grayscale_to_rgb` (a no-op on RGB). This
module gives transformers those three, computed by torch the way torchvision does, and builds the
real processor classes around them; everything else (smart resize, frame sampling, patch layout,
timestamps, placeholder expansion, tokenization) is transformers' code. Videos are decoded by
transformers' own PyAV reader (`read_video_pyav`); its default decoder, torchcodec, is not
installable here either.
"""

from __future__ import annotations

import enum
import types

import numpy as np


class InterpolationMode(enum.Enum):
  NEAREST = "nearest"
  NEAREST_EXACT = "nearest-exact"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  LANCZOS = "lanczos"


def _functional():
  import torch

  module = types.ModuleType("torchvision.transforms.v2.functional")

  def resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True):
    shape = image.shape
    flat = image.reshape(-1, *shape[-3:])
    out = torch.nn.functional.interpolate(flat, size=list(size), mode=interpolation.value, antialias=antialias,
                                          align_corners=False)
    return out.reshape(*shape[:-2], *out.shape[-2:])

  def normalize(image, mean, std, inplace=False):
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean) / std

  module.InterpolationMode, module.resize, module.normalize = InterpolationMode, resize, normalize
  module.grayscale_to_rgb = lambda video: video
  return module


_INSTALLED = False


def _import_with_stand_in(tvf, *names):
  """Imports modules that do `from torchvision.transforms.v2 import functional` at their top, with
  the stand-in registered under that name only while they import (transformers' own
  availability checks are not affected)."""
  import importlib
  import sys

  fake = {name: types.ModuleType(name) for name in ("torchvision", "torchvision.transforms",
                                                      "torchvision.transforms.v2")}
  fake["torchvision.transforms.v2"].functional = tvf
  saved = {k: sys.modules.get(k) for k in [*fake, "torchvision.transforms.v2.functional"]}
  sys.modules.update(fake)
  sys.modules["torchvision.transforms.v2.functional"] = tvf
  try:
    return [importlib.import_module(n) for n in names]
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def install_torchvision_kernels() -> None:
  global _INSTALLED
  if _INSTALLED:
    return
  import transformers.image_processing_backends as backends
  import transformers.processing_utils as processing_utils
  import transformers.video_processing_utils as video_utils
  from transformers.image_utils import PILImageResampling
  from transformers.models.qwen3_vl import video_processing_qwen3_vl

  tvf = _functional()
  image_processing_qwen2_vl, image_processing_got_ocr2, video_processing_internvl = _import_with_stand_in(
      tvf, "transformers.models.qwen2_vl.image_processing_qwen2_vl",
      "transformers.models.got_ocr2.image_processing_got_ocr2",
      "transformers.models.internvl.video_processing_internvl")
  for module in (backends, video_utils, video_processing_qwen3_vl, video_processing_internvl,
                 image_processing_qwen2_vl, image_processing_got_ocr2):
    module.tvF = tvf
  backends.pil_torch_interpolation_mapping = {PILImageResampling.BILINEAR: InterpolationMode.BILINEAR,
                                              PILImageResampling.BICUBIC: InterpolationMode.BICUBIC}
  # The processor checks its parts against transformers' auto mappings, which hold placeholders
  # for torchvision classes when torchvision is missing.
  processing_utils.ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: type(arg)
  _INSTALLED = True


def processor(directory: str, kind: str, backend: str):
  """transformers' processor for `directory` (kind: qwen3_vl | internvl; backend: pil | torchvision)."""
  install_torchvision_kernels()
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(directory)
  template = open(f"{directory}/chat_template.jinja", encoding="utf-8").read()
  if kind == "qwen3_vl":
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image_cls = Qwen2VLImageProcessorPil if backend == "pil" else Qwen2VLImageProcessor
    return Qwen3VLProcessor(image_processor=image_cls.from_pretrained(directory), tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor.from_pretrained(directory), chat_template=template)
  from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
  from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
  from transformers.models.internvl.processing_internvl import InternVLProcessor
  from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
  import json
  seq = json.load(open(f"{directory}/processor_config.json")).get("image_seq_length", 256)
  image_cls = GotOcr2ImageProcessorPil if backend == "pil" else GotOcr2ImageProcessor
  return InternVLProcessor(image_processor=image_cls.from_pretrained(directory), tokenizer=tokenizer,
                           video_processor=InternVLVideoProcessor.from_pretrained(directory), image_seq_length=seq,
                           chat_template=template)


def apply(proc, messages, backend: str, **kwargs) -> dict:
  """proc.apply_chat_template(messages, tokenize=True, return_dict=True) as numpy arrays, with
  videos decoded by transformers' PyAV reader (all frames + metadata; the processor samples) and,
  for the torchvision backend, images loaded by transformers' `load_image` (its tensor loader
  needs torchvision.io)."""
  from transformers.image_utils import load_image
  from transformers.video_utils import read_video_pyav

  metadata, converted = [], []
  for m in messages:
    m = dict(m)
    if isinstance(m.get("content"), list):
      content = []
      for block in m["content"]:
        block = dict(block)
        if block.get("type") == "video":
          frames, md = read_video_pyav(block["video"], lambda metadata, **kw: np.arange(metadata.total_num_frames))
          block["video"] = frames
          metadata.append(md)
        elif block.get("type") == "image" and backend == "torchvision":
          block["image"] = load_image(block["image"])
        content.append(block)
      m["content"] = content
    converted.append(m)
  processor_kwargs = dict(kwargs.pop("processor_kwargs", {}))
  if metadata:
    processor_kwargs["video_metadata"] = metadata
  # return_tensors="pt": InternVLProcessor reshapes its video pixels with torch methods
  out = proc.apply_chat_template(converted, tokenize=True, return_dict=True, return_tensors="pt",
                                 processor_kwargs=processor_kwargs, **kwargs)
  return {k: v.numpy() for k, v in out.items()}
