"""jaxtrain generate: complete prompts with a model (a jaxtrain run or an HF directory).

  jaxtrain generate --model runs/quickstart --prompt "def " --prompt "class "
  jaxtrain generate --model HF_DIR --prompts-file prompts.jsonl --chat --jsonl > out.jsonl
  jaxtrain generate --model QWEN3_VL_DIR --image cat.png --prompt "What is this?" --chat

A prompts file holds one prompt per line, or JSON lines with "prompt" (text, with "images": a
list of image files for a vision-language model) or "messages" (a conversation, rendered with
the chat template; content parts {"type": "image", "image": FILE} for pictures). Image paths in
a prompts file are relative to its directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from jaxtrain.cli import common

EXAMPLES = """examples:
  jaxtrain generate --model runs/quickstart --prompt "def " --prompt "class " --temperature 0
  jaxtrain generate --model HF_DIR --prompts-file prompts.jsonl --chat --jsonl > completions.jsonl
  jaxtrain generate --model runs/qwen3_vl_tiny --image square.png --prompt "What colour is the shape?" --chat"""


def _parser(prog: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description=textwrap.fill("Complete prompts with a model: a jaxtrain run or a Hugging Face directory, with the "
                             "tokenizer it came with. Completions stop at the tokenizer's end-of-sequence or "
                             "end-of-turn token.", 100),
      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_model_args(parser)
  prompts = parser.add_argument_group("prompts")
  prompts.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
  prompts.add_argument("--prompts-file", default=None, metavar="FILE",
                       help="one prompt per line, or JSON lines with 'prompt' or 'messages'; - reads stdin")
  prompts.add_argument("--image", action="append", default=[], metavar="FILE",
                       help="an image for each --prompt (repeatable: in order), for a vision-language model")
  prompts.add_argument("--chat", action="store_true",
                       help="treat each text prompt as a user message and render it with the chat template")
  prompts.add_argument("--system", default=None, help="with --chat: a system message before each prompt")
  common.add_sampling_args(parser, max_new_tokens=64)
  parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt (default 1)")
  parser.add_argument("--jsonl", action="store_true",
                      help="print one JSON object per completion: prompt, sample, completion")
  return parser


def _resolved(path: str, base: str) -> str:
  return path if os.path.isabs(path) else os.path.join(base, path)


def _with_paths(messages: list, base: str) -> list:
  """The conversation with its image / video parts' relative paths made relative to `base`."""
  out = []
  for m in messages:
    content = m.get("content") if isinstance(m, dict) else None
    if isinstance(content, list):
      content = [{**part, part["type"]: _resolved(part[part["type"]], base)}
                 if isinstance(part, dict) and part.get("type") in ("image", "video")
                 and isinstance(part.get(part["type"]), str) else part for part in content]
      m = {**m, "content": content}
    out.append(m)
  return out


def read_prompts(path: str) -> list[str | list | dict]:
  """Text prompts (str), conversations (list of messages) and text prompts with images
  ({"prompt": str, "images": [paths]}) from a prompts file."""
  f = sys.stdin if path == "-" else open(path, encoding="utf-8")
  base = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
  out: list[str | list | dict] = []
  with f:
    for lineno, line in enumerate(f, 1):
      text = line.rstrip("\n")
      if not text.strip():
        continue
      if text.lstrip().startswith("{"):
        try:
          record = json.loads(text)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
        images = record.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
          raise ValueError(f"{path}:{lineno}: 'images' must be a list of image file paths")
        if isinstance(record.get("messages"), list):
          out.append(_with_paths(record["messages"], base))
        elif isinstance(record.get("prompt"), str):
          out.append({"prompt": record["prompt"], "images": [_resolved(i, base) for i in images]} if images
                     else record["prompt"])
        else:
          raise ValueError(f"{path}:{lineno}: a JSON line needs 'prompt' (text) or 'messages' (a list)")
      else:
        out.append(text.replace("\\n", "\n"))
  return out


def main(argv: list[str] | None = None, prog: str = "jaxtrain generate") -> int:
  parser = _parser(prog)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  common.check_sampling_args(parser, args)
  if args.num_samples < 1:
    parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
  prompts: list[str | list | dict] = [{"prompt": p, "images": args.image} if args.image else p for p in args.prompt]
  if args.image and not args.prompt:
    parser.error("--image goes with the --prompt it shows (give one)")
  if args.prompts_file:
    try:
      prompts += read_prompts(args.prompts_file)
    except (OSError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  if not prompts:
    parser.error("give at least one --prompt or a --prompts-file")
  common.quiet_logging()
  lm = common.load_model(args)
  if lm is None:
    return 1
  ids = []
  try:
    for p in prompts:
      text, images = (p["prompt"], p["images"]) if isinstance(p, dict) else (p, [])
      if isinstance(p, list) or args.chat:
        content = [*({"type": "image", "image": i} for i in images), {"type": "text", "text": text}]
        messages = p if isinstance(p, list) else [{"role": "user", "content": content if images else text}]
        if args.system and not isinstance(p, list):
          messages = [{"role": "system", "content": args.system}, *messages]
        ids.append(lm.chat_prompt(messages))
      else:
        ids.append(lm.encode_prompt(text, images))
    repeated = [i for i in ids for _ in range(args.num_samples)]
    completions = lm.generate_ids(repeated, **common.sampling(args))
  except ValueError as e:  # no chat template, an image that cannot be read or does not fit, a text-only model
    print(f"error: {e}", file=sys.stderr)
    return 1
  for n, new in enumerate(completions):
    prompt, sample = prompts[n // args.num_samples], n % args.num_samples
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    if args.jsonl:
      shown = {"prompt": prompt["prompt"], "images": prompt["images"]} if isinstance(prompt, dict) else {"prompt": prompt}
      print(json.dumps({**shown, "sample": sample, "completion": text}, ensure_ascii=False))
    else:
      prompt = prompt["prompt"] if isinstance(prompt, dict) else prompt
      head = prompt if isinstance(prompt, str) and not args.chat else ""
      print(("" if n == 0 else "---\n") + head + text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
