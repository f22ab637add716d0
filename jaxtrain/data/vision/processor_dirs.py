"""Local Qwen3-VL / InternVL processor directories: a small BPE tokenizer with the family's
special tokens, the family's chat template and the processor configs its checkpoints ship.

    python -m jaxtrain.data.vision.processor_dirs --kind qwen3_vl --out DIR [--corpus FILE.jsonl ...]

Tiny models (configs/*_tiny.py) and tests use them in place of a downloaded model directory; the
tokenizer is trained on the given text (e.g. the synthetic dataset's questions and answers).
transformers reads them (AutoTokenizer, the processor classes) as it reads a checkpoint's.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
from typing import Iterable

QWEN3_VL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                     "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
                     "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# What Qwen3-VL checkpoints ship (preprocessor_config.json, video_preprocessor_config.json).
QWEN3_VL_IMAGE = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                  "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                  "image_processor_type": "Qwen2VLImageProcessorFast"}
QWEN3_VL_VIDEO = {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16,
                  "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                  "video_processor_type": "Qwen3VLVideoProcessor"}
# ... and InternVL3.5 in the transformers layout (OpenGVLab/InternVL3_5-*-HF).
INTERNVL_IMAGE = {"crop_to_patches": False, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
                  "do_resize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "max_patches": 12,
                  "min_patches": 1, "processor_class": "InternVLProcessor", "resample": 3,
                  "rescale_factor": 0.00392156862745098, "size": {"height": 448, "width": 448},
                  "image_processor_type": "GotOcr2ImageProcessorFast"}
INTERNVL_VIDEO = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                  "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "initial_shift": True,
                  "processor_class": "InternVLProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                  "size": {"height": 448, "width": 448}, "video_processor_type": "InternVLVideoProcessor"}
INTERNVL_PROCESSOR = {"image_seq_length": 256, "processor_class": "InternVLProcessor"}
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}

KINDS = ("qwen3_vl", "internvl")


def chat_template(kind: str) -> str:
  """The family's chat template as its checkpoints ship it (Qwen3-VL-*-Instruct; transformers'
  InternVL conversion)."""
  return importlib.resources.files("jaxtrain.data.vision").joinpath(f"assets/{kind}_chat_template.jinja").read_text(
      encoding="utf-8")


def write_processor_dir(out: str, kind: str, corpus: Iterable[str], vocab_size: int = 512,
                        video_overrides: dict | None = None) -> str:
  """Writes tokenizer.json, tokenizer_config.json, chat_template.jinja and the processor configs
  of `kind` into `out`; the byte-level BPE tokenizer is trained on `corpus`. Returns `out`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  if kind not in KINDS:
    raise ValueError(f"kind {kind!r} is not one of {KINDS}")
  specials = QWEN3_VL_SPECIALS if kind == "qwen3_vl" else INTERNVL_SPECIALS
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus, trainer)
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, "tokenizer.json"))
  tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20, "bos_token": None,
             "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  if kind == "qwen3_vl":
    configs = {"preprocessor_config.json": QWEN3_VL_IMAGE,
               "video_preprocessor_config.json": {**QWEN3_VL_VIDEO, **(video_overrides or {})}}
  else:
    configs = {"preprocessor_config.json": INTERNVL_IMAGE,
               "video_preprocessor_config.json": {**INTERNVL_VIDEO, **(video_overrides or {})},
               "processor_config.json": INTERNVL_PROCESSOR}
    tok_cfg["extra_special_tokens"] = INTERNVL_TOKENS
  configs["tokenizer_config.json"] = tok_cfg
  for name, cfg in configs.items():
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      json.dump(cfg, f, indent=2)
  with open(os.path.join(out, "chat_template.jinja"), "w", encoding="utf-8") as f:
    f.write(chat_template(kind))
  return out


def corpus_from_jsonl(paths: Iterable[str]) -> list[str]:
  """Every string in the records of JSONL files (questions, answers, ...)."""
  texts: list[str] = []

  def walk(value):
    if isinstance(value, str):
      texts.append(value)
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, list):
      for v in value:
        walk(v)

  for path in paths:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          walk(json.loads(line))
  return texts


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kind", choices=KINDS, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--corpus", nargs="*", default=[], help="JSONL files whose strings train the tokenizer")
  parser.add_argument("--vocab-size", type=int, default=512)
  args = parser.parse_args(argv)
  corpus = corpus_from_jsonl(args.corpus) or ["What colour is the square? red green blue"]
  print(write_processor_dir(args.out, args.kind, corpus, args.vocab_size))


if __name__ == "__main__":
  main()
