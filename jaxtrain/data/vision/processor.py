"""`VisionProcessor`: chat messages with images and videos -> token ids, loss mask and pixel
arrays, from a local Hugging Face model directory, without torch.

    proc = VisionProcessor.from_pretrained("path/to/Qwen3-VL-or-InternVL")
    out = proc.apply_chat_template(messages, add_generation_prompt=True)   # like transformers'
    out["input_ids"], out["pixel_values"], out["image_grid_thw"], ...     # numpy, batch of one

`messages` are OpenAI/Hugging Face style; a message's content is a string or a list of items
`{"type": "text", "text": ...}`, `{"type": "image", "image": PATH | PIL image | uint8 array}`,
`{"type": "video", "video": PATH}` ("url"/"path" keys are accepted for local files as in
transformers; nothing is downloaded). The chat template renders one placeholder per image or
video; each is replaced by the processor's expansion (Qwen3-VL: `<|image_pad|>` per merged
patch, per-frame `<t seconds>` blocks for videos; InternVL: `<img>` + `<IMG_CONTEXT>` per tile
token + `</img>`, `FrameN:` lines for videos) and the text is tokenized as transformers does.

The directory holds the tokenizer (tokenizer.json, tokenizer_config.json), the chat template
(chat_template.jinja / chat_template.json / processor_config.json / tokenizer_config.json),
preprocessor_config.json, and optionally video_preprocessor_config.json and
processor_config.json. Supported processor classes: Qwen3VLProcessor (model types qwen3_vl,
qwen3_vl_moe) and InternVLProcessor (internvl).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxtrain.data import chat
from jaxtrain.data.tokenizer import HFTokenizer
from jaxtrain.data.vision import media
from jaxtrain.data.vision.internvl import InternVL
from jaxtrain.data.vision.qwen_vl import Pixels, QwenVL, rope_positions

KINDS = {"Qwen3VLProcessor": "qwen3_vl", "InternVLProcessor": "internvl"}
MODEL_TYPES = {"qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl", "internvl": "internvl"}
IMAGE, VIDEO = 1, 2  # transformers' mm_token_type_ids


class ProcessorError(ValueError):
  """The model directory cannot serve as a vision-language processor (names the file)."""


def _json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ProcessorError(f"{path}: invalid JSON ({e})") from None


@dataclasses.dataclass
class VisionItem:
  kind: int  # IMAGE or VIDEO
  pixels: Pixels


@dataclasses.dataclass
class Encoded:
  """One conversation, tokenized: ids, which targets to learn, token types (0 text, 1 image,
  2 video placeholder), the vision items in the order their placeholders appear, and for
  Qwen3-VL the language model's 3-D positions [3, n]."""
  ids: np.ndarray
  learn: np.ndarray
  types: np.ndarray
  items: list[VisionItem]
  rope: np.ndarray | None
  text: str


def _local_path(value: str, base_dir: str | None) -> str:
  if re.match(r"^[a-z][a-z0-9+.-]*://", value):
    raise media.MediaError(f"{value}: only local files are read (nothing is downloaded)")
  path = os.path.expanduser(value)
  return path if os.path.isabs(path) or base_dir is None else os.path.join(base_dir, path)


def media_items(messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, Any]]:
  """(IMAGE | VIDEO, source) of the content items, in conversation order (as transformers
  collects them: "image"/"url"/"path"/"base64" keys for images, "video"/"url"/"path" for videos)."""
  out = []
  for message in messages:
    content = message.get("content")
    if not isinstance(content, (list, tuple)):
      continue
    for block in content:
      kind = block.get("type") if isinstance(block, Mapping) else None
      if kind == "image":
        out += [(IMAGE, block[k]) for k in ("image", "url", "path", "base64") if k in block]
      elif kind == "video":
        out += [(VIDEO, block[k]) for k in ("video", "url", "path") if k in block]
  return out


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  """What the template sees: media sources replaced by their paths or a marker (arrays and PIL
  images do not belong in a Jinja sandbox; templates only test for the keys)."""
  out = []
  for m in messages:
    m = dict(m)
    if isinstance(m.get("content"), (list, tuple)):
      m["content"] = [{k: (v if isinstance(v, (str, int, float, bool, type(None))) else "<data>") for k, v in b.items()}
                      if isinstance(b, Mapping) else b for b in m["content"]]
    out.append(m)
  return out


BACKENDS = ("torchvision", "pil")


class VisionProcessor:
  """See the module docstring.

  image_backend: resize images as transformers' torchvision image processors do ("torchvision",
  what transformers picks whenever torchvision is installed) or as its PIL processors do ("pil").
  `overrides` (0 = the directory's settings): image_max_pixels, video_max_pixels (Qwen3-VL),
  max_tiles (InternVL), video_fps, video_num_frames."""

  def __init__(self, directory: str, tokenizer: HFTokenizer | None = None, chat_template: str | None = None,
               image_backend: str = "torchvision", **overrides: Any):
    directory = os.fspath(directory)
    self.directory = directory
    self._template_override, self._overrides = chat_template, dict(overrides, image_backend=image_backend)
    if image_backend not in BACKENDS:
      raise ProcessorError(f"image_backend={image_backend!r} is not one of {BACKENDS}")
    image_cfg = _json(os.path.join(directory, "preprocessor_config.json"))
    if not image_cfg:
      raise ProcessorError(f"{directory}: no preprocessor_config.json (a vision-language model directory is needed)")
    video_cfg = _json(os.path.join(directory, "video_preprocessor_config.json"))
    proc_cfg = _json(os.path.join(directory, "processor_config.json"))
    model_type = _json(os.path.join(directory, "config.json")).get("model_type")
    name = proc_cfg.get("processor_class") or image_cfg.get("processor_class") or video_cfg.get("processor_class")
    self.kind = KINDS.get(name) or MODEL_TYPES.get(model_type)
    if self.kind is None:
      raise ProcessorError(f"{directory}: processor {name!r} (model_type {model_type!r}) is not supported; supported: "
                           f"{', '.join(KINDS)}")
    self.tokenizer = tokenizer or HFTokenizer(directory)
    tok_cfg = _json(os.path.join(directory, "tokenizer_config.json"))
    extra = tok_cfg.get("extra_special_tokens") or {}
    extra = extra if isinstance(extra, Mapping) else {}
    keep = {k: v for k, v in overrides.items() if v}
    if self.kind == "qwen3_vl":
      self.spec = QwenVL(image_cfg, video_cfg, image_backend=image_backend,
                         **{k: v for k, v in keep.items() if k != "max_tiles"})
      self.spec.image_token = extra.get("image_token", QwenVL.image_token)
      self.spec.video_token = extra.get("video_token", QwenVL.video_token)
      self.vision_tokens = [self.spec.image_token, self.spec.video_token]
      self.type_tokens = {IMAGE: [self.spec.image_token], VIDEO: [self.spec.video_token]}
    else:
      self.spec = InternVL(image_cfg, video_cfg, proc_cfg, image_backend=image_backend,
                           **{k: v for k, v in keep.items() if k in ("max_tiles", "video_fps", "video_num_frames")})
      self.spec.start = extra.get("start_image_token", InternVL.start)
      self.spec.end = extra.get("end_image_token", InternVL.end)
      self.spec.image_token = extra.get("context_image_token", InternVL.image_token)
      self.spec.video_token = extra.get("video_token", InternVL.video_token)
      self.vision_tokens = [self.spec.image_token]
      self.type_tokens = {IMAGE: [self.spec.image_token, self.spec.start, self.spec.end], VIDEO: []}
    ids = {}
    for token in {t for ts in self.type_tokens.values() for t in ts} | set(self.vision_tokens):
      ids[token] = self.tokenizer.token_to_id(token)
      if ids[token] is None:
        raise ProcessorError(f"{directory}/tokenizer.json: no token {token!r} (needed by the {self.kind} processor)")
    self.vision_token_ids = np.array([ids[t] for t in self.vision_tokens], np.int64)
    self.type_ids = {k: np.array([ids[t] for t in ts], np.int64) for k, ts in self.type_tokens.items()}
    self.chat_template = chat_template or self._template(proc_cfg)
    if not self.chat_template:
      raise ProcessorError(f"{directory}: no chat template (chat_template.jinja, chat_template.json, "
                           "processor_config.json or tokenizer_config.json)")
    self._placeholder = re.compile("|".join(re.escape(t) for t in (self.spec.image_token, self.spec.video_token)))

  @classmethod
  def from_pretrained(cls, directory: str, **overrides: Any) -> "VisionProcessor":
    return cls(directory, **overrides)

  def __reduce__(self):  # rebuilt from the directory in worker processes
    return _rebuild, (self.directory, self.tokenizer, self._template_override, self._overrides)

  def _template(self, proc_cfg: Mapping[str, Any]) -> str | None:
    if isinstance(proc_cfg.get("chat_template"), str):
      return proc_cfg["chat_template"]
    path = os.path.join(self.directory, "chat_template.jinja")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        return f.read()
    template = _json(os.path.join(self.directory, "chat_template.json")).get("chat_template")
    return template or self.tokenizer.chat_template

  @property
  def patch_shape(self) -> tuple[int, ...]:
    return self.spec.patch_shape

  # --- pixels ----------------------------------------------------------------------------------

  def pixels(self, kind: int, source: Any, base_dir: str | None = None) -> Pixels:
    """One image or video -> its processor output. Raises media.MediaError naming the file."""
    if kind == IMAGE:
      if isinstance(source, str):
        return self.spec.image(media.load_image(_local_path(source, base_dir)))
      return self.spec.image(_rgb(source))
    if not isinstance(source, str):
      raise media.MediaError(f"a video must be a file path, got {type(source).__name__}")
    path = _local_path(source, base_dir)
    try:
      return self.spec.video(path)
    except ValueError as e:
      if isinstance(e, media.MediaError):
        raise
      raise media.MediaError(f"{path}: {e}") from None

  # --- text ------------------------------------------------------------------------------------

  def encode(self, messages: Sequence[Mapping[str, Any]], *, base_dir: str | None = None,
             add_generation_prompt: bool = False, loss_on: str | None = "assistant", tools=None) -> Encoded:
    """Renders, expands and tokenizes a conversation; `loss_on` (assistant | last_assistant |
    all | None) marks the learned tokens (vision placeholders are never learned)."""
    sources = media_items(messages)
    shown = _template_messages(messages)
    specials = self.tokenizer.special_tokens
    if loss_on is None or add_generation_prompt:
      text = chat.render(self.chat_template, shown, tools=tools, add_generation_prompt=add_generation_prompt,
                         special_tokens=specials)
      spans = []
    else:
      text, spans = chat.assistant_spans(self.chat_template, shown, tools=tools, special_tokens=specials,
                                         which=loss_on)
    return self._tokenize(text, sources, spans, base_dir, "the chat template rendered", "in the messages")

  def encode_text(self, text: str, images: Sequence[Any] = (), *, base_dir: str | None = None) -> Encoded:
    """A plain-text prompt with images, as transformers' `processor(text=..., images=...)`: each
    image placeholder of the text (Qwen3-VL `<|image_pad|>`, InternVL `<IMG_CONTEXT>`) takes the
    next image; a text without placeholders gets its images first, each written as the chat
    template writes one (`spec.image_block`)."""
    if images and not self._placeholder.search(text):
      text = self.spec.image_block * len(images) + text
    return self._tokenize(text, [(IMAGE, image) for image in images], [], base_dir, "the prompt has", "given")

  def _tokenize(self, text: str, sources: list[tuple[int, Any]], spans, base_dir: str | None, rendered: str,
                where: str) -> Encoded:
    """Rendered text with one placeholder per item of `sources` -> expanded and tokenized."""
    queues = {IMAGE: [s for k, s in sources if k == IMAGE], VIDEO: [s for k, s in sources if k == VIDEO]}
    found = [IMAGE if m.group() == self.spec.image_token else VIDEO for m in self._placeholder.finditer(text)]
    for kind, name in ((IMAGE, "image"), (VIDEO, "video")):
      if found.count(kind) != len(queues[kind]):
        raise ValueError(f"{rendered} {found.count(kind)} {name} placeholders for {len(queues[kind])} {name}s "
                         f"{where}")
    items = []
    taken = {IMAGE: 0, VIDEO: 0}
    for kind in found:
      items.append(VisionItem(kind, self.pixels(kind, queues[kind][taken[kind]], base_dir)))
      taken[kind] += 1
    expanded, ends, gains = self._expand(text, items)
    bos = self.tokenizer.special_tokens.get("bos_token")
    ids, starts = self.tokenizer.encode_with_offsets(expanded, add_special_tokens=not (bos and text.startswith(bos)))
    ids = ids.astype(np.int64)
    learn = np.zeros(len(ids), bool)
    for a, b in spans:
      a += gains[bisect.bisect_right(ends, a)]
      b += gains[bisect.bisect_right(ends, b)]
      learn |= (starts >= a) & (starts < b)
    learn &= ~np.isin(ids, self.vision_token_ids)
    types = np.zeros(len(ids), np.int8)
    for kind, type_ids in self.type_ids.items():
      types[np.isin(ids, type_ids)] = kind
    rope = None
    if self.kind == "qwen3_vl":
      rope = rope_positions(types, [(it.kind, it.pixels.grid) for it in items], self.spec.v_merge)
    return Encoded(ids, learn, types, items, rope, expanded)

  def _expand(self, text: str, items: list[VisionItem]) -> tuple[str, list[int], list[int]]:
    """Placeholders -> their expansions; (text, placeholder end offsets, characters gained before
    each: gains[k] applies from ends[k-1] on)."""
    out, ends, gains, last = [], [], [0], 0
    for m, item in zip(self._placeholder.finditer(text), items):
      repl = self.spec.image_text(item.pixels) if item.kind == IMAGE else self.spec.video_text(item.pixels)
      out += [text[last:m.start()], repl]
      ends.append(m.end())
      gains.append(gains[-1] + len(repl) - len(m.group()))
      last = m.end()
    out.append(text[last:])
    return "".join(out), ends, gains

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                          base_dir: str | None = None, tools=None) -> dict[str, np.ndarray]:
    """transformers' `processor.apply_chat_template(messages, tokenize=True, return_dict=True,
    return_tensors="np")`, for one conversation."""
    enc = self.encode(messages, base_dir=base_dir, add_generation_prompt=add_generation_prompt, loss_on=None,
                      tools=tools)
    out = {"input_ids": enc.ids[None], "attention_mask": np.ones((1, len(enc.ids)), np.int64)}
    if self.kind == "qwen3_vl":
      out["mm_token_type_ids"] = enc.types.astype(np.int64)[None]
    return {**out, **self.pixel_arrays(enc)}

  def pixel_arrays(self, enc: Encoded) -> dict[str, np.ndarray]:
    """The pixel arrays of an encoded conversation as transformers' processor returns them."""
    out = {}
    images = [it.pixels for it in enc.items if it.kind == IMAGE]
    videos = [it.pixels for it in enc.items if it.kind == VIDEO]
    if self.kind == "qwen3_vl":
      if images:
        out["pixel_values"] = np.concatenate([p.patches for p in images])
        out["image_grid_thw"] = np.array([p.grid for p in images], np.int64)
      if videos:
        out["pixel_values_videos"] = np.concatenate([p.patches for p in videos])
        out["video_grid_thw"] = np.array([p.grid for p in videos], np.int64)
    elif enc.items:  # InternVL: image tiles and video frames in the order they appear
      out["pixel_values"] = np.concatenate([it.pixels.patches for it in enc.items])
    return out


def _rebuild(directory, tokenizer, chat_template, overrides) -> VisionProcessor:
  return VisionProcessor(directory, tokenizer, chat_template, **overrides)  # overrides hold image_backend


def _rgb(image: Any) -> np.ndarray:
  if hasattr(image, "convert"):  # a PIL image
    return np.asarray(image.convert("RGB"), np.uint8)
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise media.MediaError(f"an image array must be uint8 [H, W, 3], got {array.dtype} {array.shape}")
  return array
