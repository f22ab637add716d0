"""Tokenizers: a byte-level tokenizer, and Hugging Face tokenizers loaded from a local directory.

Both expose the same small interface the pipeline and the trainer use: `vocab_size`, `pad_id`,
`bos_id`, `eos_id` (None when the tokenizer has none), `encode(text) -> list[int]`,
`decode(ids) -> str`, `apply_chat_template(messages, add_generation_prompt=False, tools=None)`,
`name_or_path`. `encode` never adds bos/eos by itself (the pipeline adds them where the config
asks; chat templates write them into the text) and recognises special-token strings in the text,
as Hugging Face tokenizers do.

Hugging Face directories are read with the `tokenizers` library and `jinja2` only (no
`transformers`, no network): `tokenizer.json`, `tokenizer_config.json` (special tokens,
`chat_template`), and where present `special_tokens_map.json`, `chat_template.jinja`,
`chat_template.json`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxtrain.config import ConfigError
from jaxtrain.data import chat

SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                            "mask_token")


class Tokenizer:
  """Shared behaviour; subclasses set the attributes and implement the encode/decode core."""

  name_or_path: str
  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None
  chat_template: str | None
  special_tokens: dict[str, str]  # named special tokens, passed to chat templates

  def encode(self, text: str) -> list[int]:
    return self.encode_array(text).tolist()

  def encode_array(self, text: str) -> np.ndarray:
    raise NotImplementedError

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, start character offset of each token) as int32 / int64 arrays."""
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                          tools: Sequence[Any] | None = None, **kwargs: Any) -> str:
    if not self.chat_template:
      raise ValueError(f"tokenizer {self.name_or_path!r} has no chat template; set data.chat_template")
    return chat.render(self.chat_template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                       special_tokens=self.special_tokens, **kwargs)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.name_or_path!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})")


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes are ids 0..255; then pad, bos, eos and the ChatML turn markers."""

  SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>")
  VOCAB_SIZE = 256 + len(SPECIALS)
  _SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIALS))

  def __init__(self, chat_template: str | None = None):
    self.name_or_path = "byte"
    self.vocab_size = self.VOCAB_SIZE
    self._special_ids = {s: 256 + i for i, s in enumerate(self.SPECIALS)}
    self.pad_id, self.bos_id, self.eos_id = 256, 257, 258
    self.special_tokens = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    self.chat_template = chat_template or chat.BYTE_CHAT_TEMPLATE

  def __reduce__(self):
    template = None if self.chat_template == chat.BYTE_CHAT_TEMPLATE else self.chat_template
    return (ByteTokenizer, (template,))

  def token_to_id(self, token: str) -> int | None:
    if token in self._special_ids:
      return self._special_ids[token]
    data = token.encode("utf-8")
    return data[0] if len(data) == 1 else None

  @staticmethod
  def _bytes(segment: str) -> np.ndarray:
    return np.frombuffer(segment.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.int32)

  def _pieces(self, text: str):
    """Yields (start, segment, special_id or None)."""
    if "<|" not in text:
      yield 0, text, None
      return
    pos = 0
    for m in self._SPECIAL_RE.finditer(text):
      if m.start() > pos:
        yield pos, text[pos:m.start()], None
      yield m.start(), m.group(), self._special_ids[m.group()]
      pos = m.end()
    if pos < len(text):
      yield pos, text[pos:], None

  def encode_array(self, text: str) -> np.ndarray:
    parts = [np.array([sid], np.int32) if sid is not None else self._bytes(seg)
             for _, seg, sid in self._pieces(text)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids, starts = [], []
    for pos, seg, sid in self._pieces(text):
      if sid is not None:
        ids.append(np.array([sid], np.int32))
        starts.append(np.array([pos], np.int64))
        continue
      data = self._bytes(seg)
      ids.append(data)
      if len(data) == len(seg):
        starts.append(np.arange(pos, pos + len(seg), dtype=np.int64))
      else:
        cps = np.frombuffer(seg.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        widths = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
        starts.append(np.repeat(np.arange(pos, pos + len(seg), dtype=np.int64), widths))
    if not ids:
      return np.zeros(0, np.int32), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(starts)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    out = bytearray()
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if 0 <= i < 256:
        out.append(i)
      elif 256 <= i < self.vocab_size:
        if not skip_special_tokens:
          out += self.SPECIALS[i - 256].encode()
      else:
        raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary ({self.vocab_size})")
    return out.decode("utf-8", errors="replace")


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e})") from None


def _token_string(value: Any) -> str | None:
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]  # a serialised AddedToken
  return None


def _template_from_config(directory: str, config: Mapping[str, Any]) -> str | None:
  template = config.get("chat_template")
  if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    template = named.get("default") or next(iter(named.values()), None)
  if template:
    return template
  jinja_file = os.path.join(directory, "chat_template.jinja")
  if os.path.exists(jinja_file):
    with open(jinja_file, encoding="utf-8") as f:
      return f.read()
  return _read_json(os.path.join(directory, "chat_template.json")).get("chat_template") or None


class HFTokenizer(Tokenizer):
  """A Hugging Face tokenizer directory, through `tokenizers` (+ `jinja2` for chat templates)."""

  def __init__(self, directory: str, chat_template: str | None = None):
    import tokenizers

    directory = os.fspath(directory)
    self.name_or_path = directory
    self._template_override = chat_template
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{directory!r} has no tokenizer.json (a local Hugging Face tokenizer directory "
                              "is needed; nothing is downloaded)")
    self._tok = tokenizers.Tokenizer.from_file(path)
    self._tok.no_padding()
    self._tok.no_truncation()
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    fallback = _read_json(os.path.join(directory, "special_tokens_map.json"))
    self.special_tokens = {}
    for attr in SPECIAL_TOKEN_ATTRIBUTES:
      token = _token_string(config.get(attr)) or _token_string(fallback.get(attr))
      if token is not None:
        if self._tok.token_to_id(token) is None:
          raise ValueError(f"{directory}: {attr} {token!r} is not in the vocabulary of tokenizer.json")
        self.special_tokens[attr] = token
    ids = {attr: self._tok.token_to_id(tok) for attr, tok in self.special_tokens.items()}
    self.bos_id = ids.get("bos_token")
    self.eos_id = ids.get("eos_token")
    pad = ids.get("pad_token")
    for fallback_id in (self.eos_id, ids.get("unk_token"), 0):
      if pad is None:
        pad = fallback_id
    self.pad_id = int(pad)
    self.vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
    self.chat_template = chat_template or _template_from_config(directory, config)

  def __reduce__(self):  # rebuilt from the directory in worker processes
    return (HFTokenizer, (self.name_or_path, self._template_override))

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode_array(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_with_offsets(self, text: str, add_special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
    # add_special_tokens: apply tokenizer.json's post-processor (as a transformers processor does)
    enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
    starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(enc.offsets))
    return np.asarray(enc.ids, dtype=np.int32), starts

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode(np.asarray(ids, dtype=np.int64).reshape(-1).tolist(),
                            skip_special_tokens=skip_special_tokens)


def resolve_chat_template(value: str) -> str | None:
  """data.chat_template: "" (the tokenizer's own), a path to a .jinja file, or a template."""
  if not value:
    return None
  if "{%" in value or "{{" in value:
    return value
  if os.path.isfile(value):
    with open(value, encoding="utf-8") as f:
      return f.read()
  raise ConfigError(f"config data.chat_template: {value!r} is neither a Jinja template nor an existing file")


def build_tokenizer(data: Any) -> Tokenizer:
  """The tokenizer named by `config.data` (the full run config is accepted too)."""
  if "seq_len" not in data and "data" in data:
    data = data["data"]
  template = resolve_chat_template(data.get("chat_template", ""))
  if data["tokenizer"] == "byte":
    return ByteTokenizer(chat_template=template)
  try:
    return HFTokenizer(data["tokenizer"], chat_template=template)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config data.tokenizer: {e}") from None
