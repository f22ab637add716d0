"""Text in, text out: a trained model with its tokenizer, for `jaxtrain generate`, `jaxtrain chat`
and notebooks.

    lm = TextModel.load("runs/quickstart")          # a workdir, checkpoint or HF directory
    lm.generate(["def ", "class "], max_new_tokens=64)
    for piece in lm.stream(lm.chat_prompt([{"role": "user", "content": "Hi"}]), max_new_tokens=64):
      print(piece, end="", flush=True)

Vision-language models (Qwen3-VL, InternVL) take pictures too, through the model's processor
(the HF directory's preprocessor_config.json, or the processor directory the run trained with):

    lm.generate(["What colour is the square?"], images=[["square.png"]], temperature=0)
    lm.chat_prompt([{"role": "user", "content": [{"type": "image", "image": "square.png"},
                                                 {"type": "text", "text": "What colour is it?"}]}])

The tokenizer comes with the model: an HF directory's own files, or the tokenizer (and chat
template) the run trained with. Sampling is the rollout sampler's (`jaxtrain.generate.Sampler`:
a KV cache, prompts of any lengths in one batch, stop tokens on the device, compiled programs
reused across calls of similar shapes); `stream` yields each compiled decoding chunk as it lands.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jaxtrain.converters import from_pretrained
from jaxtrain.converters.hf_config import is_hf_dir
from jaxtrain.converters.load import checkpoint_model_section
from jaxtrain.data.tokenizer import HFTokenizer, Tokenizer, build_tokenizer
from jaxtrain.data.vision.processor import VisionProcessor, media_items
from jaxtrain.generate.sampler import Sampler, SamplingParams
from jaxtrain.generate.vision import VisionPrompt

log = logging.getLogger("jaxtrain")


def _generation_eos_ids(directory: str) -> set[int]:
  """eos_token_id of an HF directory's generation_config.json (an int or a list)."""
  path = os.path.join(directory, "generation_config.json")
  if not os.path.isfile(path):
    return set()
  with open(path) as f:
    value = json.load(f).get("eos_token_id")
  return set(value if isinstance(value, list) else [value] if isinstance(value, int) else [])


def tokenizer_for(path: str, tokenizer: str | None = None, chat_template: str = "") -> tuple[Tokenizer, dict]:
  """(tokenizer, the data settings the model trained with) for a model at `path`: `tokenizer`
  ("byte" or an HF tokenizer directory) if given, else the HF directory's own, else the one
  the jaxtrain run was configured with. Raises ValueError when none is found."""
  data: dict[str, Any] = {}
  if tokenizer is None:
    if is_hf_dir(path):
      tokenizer = path if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
    else:
      saved = checkpoint_model_section(path)[3]
      data = dict(saved.get("data") or {})
      tokenizer = data.get("tokenizer")
      chat_template = chat_template or data.get("chat_template", "")
      init_from = (saved.get("model") or {}).get("init_from") or ""
      if tokenizer is None and init_from and os.path.isfile(os.path.join(init_from, "tokenizer.json")):
        tokenizer = init_from  # an import-hf checkpoint: the HF directory it came from
  if tokenizer is None:
    raise ValueError(f"{path}: no tokenizer found with the model; pass one (--tokenizer byte or a Hugging Face "
                     "tokenizer directory)")
  return build_tokenizer({"tokenizer": tokenizer, "chat_template": chat_template}), data


def end_of_turn_id(tokenizer: Tokenizer) -> int | None:
  """The token a chat template writes right after an assistant message (<|im_end|>,
  <|eot_id|>, ...), found by rendering one; None without a template."""
  if not tokenizer.chat_template:
    return None
  marker = "\u2063REPLY\u2063"
  text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}])
  suffix = text.split(marker, 1)[1] if marker in text else ""
  ids = tokenizer.encode(suffix) if suffix.strip() else []
  return ids[0] if ids else None


def processor_dir_for(path: str, tokenizer: str | None, data: Mapping[str, Any]) -> str | None:
  """The directory holding the model's image processor (preprocessor_config.json): the tokenizer
  directory given, the HF directory, or the processor / tokenizer directory the run trained with."""
  vision = data.get("vision") or {}
  for d in (tokenizer, path if is_hf_dir(path) else None, vision.get("processor"), data.get("tokenizer")):
    if d and os.path.isfile(os.path.join(d, "preprocessor_config.json")):
      return d
  return None


class TextModel:
  """A model and its tokenizer (and, for a vision-language model, its processor): prompts in,
  completions out."""

  def __init__(self, model, tokenizer: Tokenizer, *, add_bos: bool = True, stop_ids: Sequence[int] = (),
               processor_dir: str | None = None, processor_options: Mapping[str, Any] | None = None):
    self.model = model
    self.tokenizer = tokenizer
    self.add_bos = add_bos and tokenizer.bos_id is not None
    self.stop_ids = {i for i in (tokenizer.eos_id, end_of_turn_id(tokenizer), *stop_ids) if i is not None}
    self._samplers: dict[int, Sampler] = {}
    self.processor_dir = processor_dir
    self._processor_options = dict(processor_options or {})
    self._processor = None

  @property
  def takes_pictures(self) -> bool:
    return bool(getattr(getattr(self.model, "cfg", None), "vision", None) and self.model.cfg.vision.enabled)

  @property
  def processor(self):
    """The model's `VisionProcessor` (built on first use); ValueError for a text-only model or
    one without a processor directory."""
    if self._processor is None:
      if not self.takes_pictures:
        raise ValueError("this is a text-only model (model.vision.tower is 'none'): it cannot take images")
      if self.processor_dir is None:
        raise ValueError("no image processor found with the model (a directory with preprocessor_config.json: "
                         "the HF directory, or data.vision.processor / data.tokenizer of the run); give that "
                         "directory as the tokenizer (TextModel.load(path, tokenizer=DIR), --tokenizer DIR)")
      tok = self.tokenizer if isinstance(self.tokenizer, HFTokenizer) else None
      self._processor = VisionProcessor(self.processor_dir, tokenizer=tok,
                                        chat_template=self.tokenizer.chat_template or None, **self._processor_options)
    return self._processor

  def sampler(self, decode_chunk: int = 16) -> Sampler:
    """The sampler of this model decoding `decode_chunk` tokens per compiled step (one each, kept)."""
    if decode_chunk not in self._samplers:
      self._samplers[decode_chunk] = Sampler(self.model, tokenizer=self.tokenizer, eos_ids=sorted(self.stop_ids),
                                             vocab_limit=self.tokenizer.vocab_size, decode_chunk=decode_chunk)
    return self._samplers[decode_chunk]

  @classmethod
  def load(cls, path: str, *, tokenizer: str | None = None, chat_template: str = "", dtype: str = "float32",
           progress: bool | None = None) -> "TextModel":
    """A jaxtrain workdir / checkpoint (its latest step, or a step directory) or an HF directory."""
    path = os.path.expanduser(path)
    tok, data = tokenizer_for(path, tokenizer, chat_template)
    model = from_pretrained(path, dtype=dtype, progress=progress)
    stop = _generation_eos_ids(path) | _generation_eos_ids(tok.name_or_path)  # the HF directory's, if any
    vision = dict(data.get("vision") or {})  # the run's image settings, so pictures are seen as in training
    options = {k: vision[k] for k in ("image_backend", "image_max_pixels", "video_max_pixels", "max_tiles",
                                      "video_fps", "video_num_frames") if vision.get(k)}
    return cls(model, tok, add_bos=bool(data.get("add_bos", True)), stop_ids=sorted(stop),
               processor_dir=processor_dir_for(path, tokenizer, data), processor_options=options)

  # -- prompts --------------------------------------------------------------------------------
  def encode_prompt(self, text: str, images: Sequence[Any] | None = None) -> list[int] | VisionPrompt:
    """Token ids of a plain-text prompt (bos first where the model trained with one; a chat
    template writes its own). With `images` (paths, PIL images or uint8 `[H, W, 3]` arrays), a
    `VisionPrompt`: the text's image placeholders take them in order, or they come first."""
    if images:
      enc = self.processor.encode_text(text, list(images))
      return VisionPrompt.from_processor({"input_ids": enc.ids, **self.processor.pixel_arrays(enc)})
    ids = self.tokenizer.encode(text)
    if self.add_bos and not (ids and ids[0] == self.tokenizer.bos_id):
      ids = [self.tokenizer.bos_id] + ids
    return ids

  def chat_prompt(self, messages: Sequence[Mapping[str, Any]], *, base_dir: str | None = None
                  ) -> list[int] | VisionPrompt:
    """Token ids of a conversation rendered with the chat template, ready for the reply; a
    `VisionPrompt` when a message holds `{"type": "image", "image": PATH | PIL image}` (or
    video) parts, rendered as transformers' processors render them (relative paths from
    `base_dir`)."""
    if media_items(messages):
      out = self.processor.apply_chat_template(messages, add_generation_prompt=True, base_dir=base_dir)
      return VisionPrompt.from_processor(out)
    return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

  def _drop_stop(self, ids: Sequence[int]) -> list[int]:
    return list(ids[:-1]) if ids and ids[-1] in self.stop_ids else list(ids)

  # -- sampling -------------------------------------------------------------------------------
  def _checked(self, i: int, p) -> list[int] | VisionPrompt:
    if not len(p):
      raise ValueError(f"prompt {i} is empty (no tokens)")
    if isinstance(p, VisionPrompt):
      if p.pixels and not self.takes_pictures:
        raise ValueError(f"prompt {i} has images, but this is a text-only model (model.vision.tower is 'none')")
      return p
    return list(p)

  def generate_ids(self, prompts: Sequence[Sequence[int] | VisionPrompt], *, max_new_tokens: int = 64,
                   temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """New token ids for each prompt (token ids, or a `VisionPrompt` from `encode_prompt` /
    `chat_prompt` with pictures; one batch, any lengths), without the stop token."""
    prompts = [self._checked(i, p) for i, p in enumerate(prompts)]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    batch = self.sampler().generate(prompts, params, seed=seed)
    return [self._drop_stop(c.token_ids) for c in batch.completions]

  def generate(self, prompts: Sequence[str], *, images: Sequence[Sequence[Any] | None] | None = None,
               **sampling) -> list[str]:
    """Completions of plain-text prompts; `images[i]`: prompt i's pictures (paths, PIL images;
    see `encode_prompt`). See `generate_ids` for the sampling options."""
    if images is not None and len(images) != len(prompts):
      raise ValueError(f"images: {len(images)} lists for {len(prompts)} prompts (one per prompt, None for none)")
    pictures = images or [None] * len(prompts)
    ids = self.generate_ids([self.encode_prompt(p, im) for p, im in zip(prompts, pictures)], **sampling)
    return [self.tokenizer.decode(i, skip_special_tokens=True) for i in ids]

  def stream(self, prompt_ids: Sequence[int] | VisionPrompt, *, max_new_tokens: int = 256, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, chunk: int = 8) -> Iterator[str]:
    """The completion of one prompt (token ids or a `VisionPrompt`) as text pieces, `chunk`
    tokens at a time (one compiled decoding step each, one KV cache for the whole reply); stops
    at a stop token."""
    if not len(prompt_ids):
      raise ValueError("the prompt is empty (no tokens)")
    prompt = self._checked(0, prompt_ids)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    new: list[int] = []
    shown = text = ""
    for ids in self.sampler(chunk).stream(prompt, params, seed=seed):
      stopped = bool(ids) and ids[-1] in self.stop_ids
      new += self._drop_stop(ids)
      text = self.tokenizer.decode(new, skip_special_tokens=True)
      if stopped or not text.endswith("\ufffd"):  # hold back a character whose bytes are incomplete
        yield text[len(shown):]
        shown = text
      if stopped:
        return
    if len(shown) < len(text):
      yield text[len(shown):]

