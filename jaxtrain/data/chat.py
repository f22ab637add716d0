"""Chat templates: Hugging Face-compatible Jinja rendering and assistant spans for loss masks.

Rendering mirrors `transformers`' `apply_chat_template` (sandboxed Jinja with trim_blocks and
lstrip_blocks, `tojson` without HTML escaping, `raise_exception`, `strftime_now`, loop controls,
`{% generation %}` blocks accepted, messages' None-valued keys dropped, the tokenizer's named
special tokens passed as variables), so the same template gives the same text.

Assistant spans come from rendering prefixes of the conversation: the text an assistant turn
adds is `render(messages[:i+1])` minus `render(messages[:i], add_generation_prompt=True)`. That
is exactly what the model must produce after the generation prompt at inference time,
end-of-turn token included.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence

ROLES = ("system", "user", "assistant", "tool")

# The byte tokenizer's template: ChatML (as Qwen uses), with <|im_start|> / <|im_end|> as
# special tokens and tool schemas in the system turn.
BYTE_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\nCall a tool with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call>"
    "<|im_end|>\\n' }}"
    "{%- elif messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '<tool_call>{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) }}"
    "{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class TemplateError(ValueError):
  """The chat template failed for a conversation (raise_exception, bad structure, ...)."""


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
  import jinja2
  from jinja2 import nodes
  from jinja2.ext import Extension, loopcontrols
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class GenerationBlock(Extension):
    # `{% generation %}...{% endgeneration %}` marks assistant text in some templates; it renders
    # its body unchanged (we find assistant text by prefix rendering instead).
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
      return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[GenerationBlock, loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  return env.from_string(source)


def _plain(value: Any) -> Any:
  """JSON-like copy of what the template sees (no rich objects inside the sandbox)."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "item"):  # numpy scalars
    return _plain(value.item())
  return str(value)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Drops None-valued keys (as transformers does: templates handle a missing key, not None)."""
  return [{k: _plain(v) for k, v in m.items() if v is not None} for m in messages]


def render(template: str, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Any] | None = None,
           add_generation_prompt: bool = False, special_tokens: Mapping[str, str] | None = None,
           **kwargs: Any) -> str:
  import jinja2
  variables = dict(special_tokens or {})
  variables.update(kwargs)
  try:
    return compile_template(template).render(
        messages=normalize_messages(messages), tools=_plain(list(tools)) if tools is not None else None,
        documents=None, add_generation_prompt=add_generation_prompt, **variables)
  except jinja2.exceptions.TemplateError as e:
    raise TemplateError(f"chat template error: {e}") from None
  except (TypeError, AttributeError, KeyError, IndexError) as e:
    raise TemplateError(f"chat template failed on this conversation: {type(e).__name__}: {e}") from None


def assistant_spans(template: str, messages: Sequence[Mapping[str, Any]], *, tools=None,
                    special_tokens: Mapping[str, str] | None = None,
                    which: str = "assistant") -> tuple[str, list[tuple[int, int]]]:
  """Renders a conversation; returns (text, character spans of the assistant turns to train).

  `which`: "assistant" (every assistant turn), "last_assistant" (the final one) or "all" (the
  whole text is one span). Raises TemplateError when the template does not render prefixes of
  the conversation as prefixes of its full rendering (then the turns cannot be located).
  """
  text = render(template, messages, tools=tools, special_tokens=special_tokens)
  if which == "all":
    return text, [(0, len(text))]
  turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
  if which == "last_assistant":
    turns = turns[-1:]
  spans = []
  for i in turns:
    before = render(template, messages[:i], tools=tools, add_generation_prompt=True,
                    special_tokens=special_tokens)
    through = render(template, messages[:i + 1], tools=tools, special_tokens=special_tokens)
    if not (through.startswith(before) and text.startswith(through)):
      raise TemplateError(
          f"cannot locate assistant turn {i}: the chat template does not render this "
          "conversation's prefixes as prefixes of the whole (it rewrites earlier turns); "
          "train on the final turn only with data.loss_on=last_assistant")
    if spans and len(before) < spans[-1][1]:
      raise TemplateError(f"assistant turn {i} overlaps the previous one in the rendered text")
    spans.append((len(before), len(through)))
  return text, spans
