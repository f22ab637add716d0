"""jaxtrain generate: complete prompts with a model (a jaxtrain run or an HF directory).

  jaxtrain generate --model runs/quickstart --prompt "def " --prompt "class "
  jaxtrain generate --model HF_DIR --prompts-file prompts.jsonl --chat --jsonl > out.jsonl

A prompts file holds one prompt per line, or JSON lines with "prompt" (text) or "messages" (a
conversation, rendered with the chat template).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from jaxtrain.cli import common

EXAMPLES = """examples:
  jaxtrain generate --model runs/quickstart --prompt "def " --prompt "class " --temperature 0
  jaxtrain generate --model HF_DIR --prompts-file prompts.jsonl --chat --jsonl > completions.jsonl"""


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
  prompts.add_argument("--chat", action="store_true",
                       help="treat each text prompt as a user message and render it with the chat template")
  prompts.add_argument("--system", default=None, help="with --chat: a system message before each prompt")
  common.add_sampling_args(parser, max_new_tokens=64)
  parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt (default 1)")
  parser.add_argument("--jsonl", action="store_true",
                      help="print one JSON object per completion: prompt, sample, completion")
  return parser


def read_prompts(path: str) -> list[str | list]:
  """Text prompts (str) and conversations (list of messages) from a prompts file."""
  f = sys.stdin if path == "-" else open(path, encoding="utf-8")
  out: list[str | list] = []
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
        if isinstance(record.get("messages"), list):
          out.append(record["messages"])
        elif isinstance(record.get("prompt"), str):
          out.append(record["prompt"])
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
  prompts: list[str | list] = list(args.prompt)
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
      if isinstance(p, list) or args.chat:
        messages = p if isinstance(p, list) else [{"role": "user", "content": p}]
        if args.system and not isinstance(p, list):
          messages = [{"role": "system", "content": args.system}, *messages]
        ids.append(lm.chat_prompt(messages))
      else:
        ids.append(lm.encode_prompt(p))
  except ValueError as e:  # no chat template
    print(f"error: {e}", file=sys.stderr)
    return 1
  repeated = [i for i in ids for _ in range(args.num_samples)]
  completions = lm.generate_ids(repeated, **common.sampling(args))
  for n, new in enumerate(completions):
    prompt, sample = prompts[n // args.num_samples], n % args.num_samples
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    if args.jsonl:
      print(json.dumps({"prompt": prompt, "sample": sample, "completion": text}, ensure_ascii=False))
    else:
      head = prompt if isinstance(prompt, str) and not args.chat else ""
      print(("" if n == 0 else "---\n") + head + text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
