"""Record formats: a source record -> token ids + which tokens the model learns to predict.

- text: the document's text (bos/eos added per data.add_bos / add_eos); every token is learned.
- chat: OpenAI-style `messages` (system / user / assistant / tool, assistant `tool_calls`),
  optional per-record `tools`, rendered with the tokenizer's chat template; learned tokens are
  the assistant turns (data.loss_on = assistant | last_assistant | all), end-of-turn included.
- prompt_completion: `prompt` + `completion`; the completion (and eos) is learned.
- alpaca: `instruction` (+ optional `input`) -> the Stanford Alpaca prompt; `output` is learned.
- vision_chat / llava: conversations with images and videos, through the run's vision-language
  processor (data/vision/: records.py, pieces.py); assistant turns are learned.

A malformed record raises `BadRecord(reason, detail)`; `DocumentTransform` turns it into an
error naming file and line, or into a counted skip (data.on_bad_record).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from jaxtrain.data import chat
from jaxtrain.data.config import VISION_FORMATS
from jaxtrain.data.errors import BadRecord, DataError, bad_record_error
from jaxtrain.data.packing import document_pieces, empty_piece

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def _decode(data: bytes) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadRecord("invalid_utf8", f"byte {e.start}: {e.reason}") from None


def parse_record(payload: Any) -> dict:
  """A JSON line (bytes) or a table row (dict) -> dict."""
  if isinstance(payload, dict):
    return payload
  text = _decode(payload)
  if not text.strip():
    raise BadRecord("empty_line", "blank line")
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    raise BadRecord("malformed_json", f"{e.msg} at column {e.colno}") from None
  if not isinstance(record, dict):
    raise BadRecord("not_an_object", f"a JSON {type(record).__name__}, not an object")
  return record


def string_field(record: dict, name: str, *, optional: bool = False) -> str:
  value = record.get(name)
  if value is None:
    if optional:
      return ""
    raise BadRecord("missing_field", f"no field {name!r} (fields: {', '.join(map(str, record)) or 'none'})")
  if not isinstance(value, str):
    raise BadRecord("non_string_field", f"field {name!r} is a {type(value).__name__}, not a string")
  return value


def check_messages(messages: Any, name: str, loss_on: str) -> list[dict]:
  """Validates an OpenAI-style conversation; returns it (as a list of dicts)."""
  if messages is None:
    raise BadRecord("missing_field", f"no field {name!r}")
  if not isinstance(messages, (list, tuple)):
    raise BadRecord("bad_messages", f"field {name!r} is a {type(messages).__name__}, not a list of messages")
  if not messages:
    raise BadRecord("empty_conversation", f"field {name!r} is an empty list")
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise BadRecord("bad_message", f"message {i} is a {type(m).__name__}, not an object")
    role = m.get("role")
    if role is None:
      raise BadRecord("missing_field", f"message {i} has no 'role'")
    if role not in chat.ROLES:
      raise BadRecord("bad_role", f"message {i} has role {role!r}; known roles: {', '.join(chat.ROLES)}")
    calls = m.get("tool_calls")
    if calls is not None:
      if role != "assistant" or not isinstance(calls, list):
        raise BadRecord("bad_tool_calls", f"message {i}: tool_calls must be a list on an assistant message")
      for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
          raise BadRecord("bad_tool_calls", f"message {i}: tool call {j} has no function name")
    content = m.get("content")
    if content is None:
      if not (role == "assistant" and calls):
        raise BadRecord("missing_field", f"message {i} ({role}) has no 'content'")
    elif not isinstance(content, str):
      raise BadRecord("non_string_content", f"message {i} ({role}) content is a {type(content).__name__}, "
                      "not a string")
  if loss_on != "all" and not any(m["role"] == "assistant" for m in messages):
    raise BadRecord("no_assistant_turn", "no assistant message to learn from")
  return list(messages)


class DocumentTransform:
  """Source record -> list of packable pieces (a Grain map transform; picklable)."""

  def __init__(self, source: str, kind: str, entry: dict, tokenizer: Any, *, seq_len: int, overlong: str,
               on_bad_record: str, loss_on: str, add_bos: bool, add_eos: bool, vision: Any = None):
    self.source, self.kind, self.entry, self.tokenizer = source, kind, dict(entry), tokenizer
    self.format = self.entry["format"]
    self.seq_len, self.overlong, self.on_bad_record, self.loss_on = seq_len, overlong, on_bad_record, loss_on
    self.bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    self.eos = [tokenizer.eos_id] if add_eos and tokenizer.eos_id is not None else []
    self.vision = vision  # data.vision.pieces.VisionPieces in a vision run (every piece gets its features)
    if self.format == "chat" and not tokenizer.chat_template:
      raise DataError(f"config data.chat_template: source {source!r} has format=chat but tokenizer "
                      f"{tokenizer.name_or_path!r} has no chat template")

  def __call__(self, item) -> list[dict]:
    pieces = self._pieces(item)
    return [self.vision.complete(p) for p in pieces] if self.vision is not None else pieces

  def _pieces(self, item) -> list[dict]:
    payload, file, where = item
    meta = {"src": self.source, "doc": 1}
    if self.kind == "tokens":
      piece, nxt, first = payload
      meta["doc"] = int(first)
      return [self._token_piece(piece, nxt, meta)]
    try:
      if self.vision is not None and self.format in VISION_FORMATS:
        return self.vision.document(parse_record(payload), self.format, self.entry, file, meta,
                                    loss_on=self.loss_on, overlong=self.overlong, where=where)
      ids, learn = self.encode(payload)
    except BadRecord as bad:
      if self.on_bad_record == "error":
        raise bad_record_error(where, bad) from None
      meta.update(doc=0, bad=[bad.reason, file, where, bad.detail])
      return [empty_piece(meta)]
    if len(ids) == 0 or not learn[1:].any():
      meta.update(doc=0, empty=1)
      return [empty_piece(meta)]
    return document_pieces(ids, learn, self.tokenizer.pad_id, meta, self.seq_len, self.overlong, where)

  def _token_piece(self, piece: np.ndarray, nxt: int, meta: dict) -> dict:
    n = len(piece)
    rows = np.empty((n, 3), np.int32)
    rows[:, 0] = piece
    rows[:-1, 1] = piece[1:]
    rows[-1, 1] = nxt if nxt >= 0 else self.tokenizer.pad_id
    rows[:, 2] = 1
    if nxt < 0:
      rows[-1, 2] = 0
    return {"tokens": rows, "meta": meta}

  # --- formats -------------------------------------------------------------------------------

  def encode(self, payload: Any) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids int32 [n], learn bool [n]: token j is a prediction target)."""
    e, tok = self.entry, self.tokenizer
    if self.format == "text":
      if isinstance(payload, str):
        text = payload
      elif isinstance(payload, (bytes, bytearray)) and self.kind == "text":
        text = _decode(payload)
      else:
        text = string_field(parse_record(payload), e["text_field"])
      if not text:
        return np.zeros(0, np.int32), np.zeros(0, bool)
      ids = np.concatenate([np.asarray(self.bos, np.int32), tok.encode_array(text), np.asarray(self.eos, np.int32)])
      return ids, np.ones(len(ids), bool)
    if self.format == "prompt":
      raise DataError("format 'prompt' holds RL prompts without completions: use it with train.method=grpo")
    record = parse_record(payload)
    if self.format in VISION_FORMATS:
      raise DataError(f"format={self.format!r} is read by the vision pipeline (data/vision/pieces.py)")
    if self.format == "chat":
      return self._chat(record)
    if self.format == "prompt_completion":
      prompt, completion = string_field(record, e["prompt_field"]), string_field(record, e["completion_field"])
    else:  # alpaca
      instruction = string_field(record, e["instruction_field"])
      extra = string_field(record, e["input_field"], optional=True)
      completion = string_field(record, e["output_field"])
      template = ALPACA_PROMPT if extra.strip() else ALPACA_PROMPT_NO_INPUT
      prompt = template.format(instruction=instruction, input=extra)
    head = np.concatenate([np.asarray(self.bos, np.int32), tok.encode_array(prompt)])
    tail = np.concatenate([tok.encode_array(completion), np.asarray(self.eos, np.int32)])
    return np.concatenate([head, tail]), np.concatenate([np.zeros(len(head), bool), np.ones(len(tail), bool)])

  def _chat(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
    e, tok = self.entry, self.tokenizer
    messages = check_messages(record.get(e["messages_field"]), e["messages_field"], self.loss_on)
    tools = record.get(e["tools_field"])
    if tools is not None and not isinstance(tools, list):
      raise BadRecord("bad_tools", f"field {e['tools_field']!r} is a {type(tools).__name__}, not a list")
    try:
      text, spans = chat.assistant_spans(tok.chat_template, messages, tools=tools or None,
                                         special_tokens=tok.special_tokens, which=self.loss_on)
    except chat.TemplateError as err:
      raise BadRecord("template_error", str(err)) from None
    ids, starts = tok.encode_with_offsets(text)
    learn = np.zeros(len(ids), bool)
    for a, b in spans:
      learn |= (starts >= a) & (starts < b)
    return ids, learn
