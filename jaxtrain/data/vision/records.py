"""Multimodal records -> chat messages whose content lists hold text, image and video items.

- vision_chat: `messages` as transformers' processors take them: a message's content is a
  string or a list of `{"type": "text", "text": ...}`, `{"type": "image", "image": PATH}`,
  `{"type": "video", "video": PATH}` items.
- llava: LLaVA-style records: `messages` (role / content) or `conversations` (from / value, with
  human / gpt roles) whose text holds `<image>` and `<video>` placeholders, and the files in
  `images` / `image` and `videos` / `video` (a path or a list). Records whose text has no
  placeholder get their images (then videos) at the start of the first user turn, as LLaVA does.

Paths are relative to the directory of the file the record comes from. A malformed record raises
BadRecord, so it is named by file and line or skipped and counted (data.on_bad_record).
"""

from __future__ import annotations

import re
from jaxtrain.data import chat
from jaxtrain.data.errors import BadRecord

LLAVA_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system",
               "tool": "tool"}
PLACEHOLDER = re.compile(r"<image>|<video>")


def vision_messages(record: dict, field: str, loss_on: str) -> list[dict]:
  messages = record.get(field)
  if messages is None:
    raise BadRecord("missing_field", f"no field {field!r} (fields: {', '.join(map(str, record)) or 'none'})")
  if not isinstance(messages, list) or not messages:
    raise BadRecord("bad_messages", f"field {field!r} must be a non-empty list of messages")
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise BadRecord("bad_message", f"message {i} is a {type(m).__name__}, not an object")
    if m.get("role") not in chat.ROLES:
      raise BadRecord("bad_role", f"message {i} has role {m.get('role')!r}; known roles: {', '.join(chat.ROLES)}")
    content = m.get("content")
    if isinstance(content, str) or (content is None and m.get("tool_calls")):
      continue
    if not isinstance(content, list):
      raise BadRecord("bad_content", f"message {i}: content must be a string or a list of items")
    for j, item in enumerate(content):
      kind = item.get("type") if isinstance(item, dict) else None
      if kind == "text":
        if not isinstance(item.get("text"), str):
          raise BadRecord("bad_content", f"message {i} item {j}: a text item needs a string 'text'")
      elif kind in ("image", "video"):
        if not any(isinstance(item.get(k), str) for k in (kind, "path", "url")):
          raise BadRecord("bad_content", f"message {i} item {j}: an {kind} item needs a file path in {kind!r}")
      else:
        raise BadRecord("bad_content", f"message {i} item {j}: type {kind!r} is not text, image or video")
  if loss_on != "all" and not any(m["role"] == "assistant" for m in messages):
    raise BadRecord("no_assistant_turn", "no assistant message to learn from")
  return messages


def _paths(record: dict, plural: str, singular: str) -> list[str]:
  value = record.get(plural, record.get(singular))
  if value is None:
    return []
  values = [value] if isinstance(value, str) else value
  if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
    raise BadRecord("bad_media_field", f"field {plural!r} must be a path or a list of paths")
  return values


def llava_messages(record: dict, field: str, images_field: str, videos_field: str, loss_on: str) -> list[dict]:
  raw = record.get(field, record.get("conversations"))
  if not isinstance(raw, list) or not raw:
    raise BadRecord("missing_field", f"no list of messages in {field!r} or 'conversations'")
  images = _paths(record, images_field, "image")
  videos = _paths(record, videos_field, "video")
  turns = []
  for i, m in enumerate(raw):
    if not isinstance(m, dict):
      raise BadRecord("bad_message", f"message {i} is a {type(m).__name__}, not an object")
    role = LLAVA_ROLES.get(m.get("role", m.get("from")))
    text = m.get("content", m.get("value"))
    if role is None:
      raise BadRecord("bad_role", f"message {i} has role {m.get('role', m.get('from'))!r}")
    if not isinstance(text, str):
      raise BadRecord("non_string_content", f"message {i} ({role}) text is not a string")
    turns.append((role, text))
  if not any(PLACEHOLDER.search(t) for _, t in turns) and (images or videos):
    first = next((i for i, (r, _) in enumerate(turns) if r == "user"), 0)
    turns[first] = (turns[first][0], "<image>" * len(images) + "<video>" * len(videos) + turns[first][1])
  queues = {"<image>": list(images), "<video>": list(videos)}
  messages = []
  for role, text in turns:
    parts, last = [], 0
    for m in PLACEHOLDER.finditer(text):
      if m.start() > last:
        parts.append({"type": "text", "text": text[last:m.start()]})
      if not queues[m.group()]:
        raise BadRecord("placeholder_mismatch", f"more {m.group()} placeholders than files "
                        f"({len(images)} images, {len(videos)} videos)")
      kind = m.group()[1:-1]
      parts.append({"type": kind, kind: queues[m.group()].pop(0)})
      last = m.end()
    if last < len(text):
      parts.append({"type": "text", "text": text[last:]})
    has_media = any(p["type"] != "text" for p in parts)
    messages.append({"role": role, "content": parts if has_media else text})
  if queues["<image>"] or queues["<video>"]:
    raise BadRecord("placeholder_mismatch", f"{len(queues['<image>'])} images and {len(queues['<video>'])} videos "
                    "have no <image> / <video> placeholder")
  if loss_on != "all" and not any(m["role"] == "assistant" for m in messages):
    raise BadRecord("no_assistant_turn", "no assistant message to learn from")
  return messages


def record_messages(record: dict, fmt: str, entry: dict, loss_on: str) -> list[dict]:
  if fmt == "vision_chat":
    return vision_messages(record, entry["messages_field"], loss_on)
  return llava_messages(record, entry["messages_field"], entry["images_field"], entry["videos_field"], loss_on)

