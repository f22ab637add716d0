"""jaxtrain chat: talk to a model in the terminal. Each turn is rendered with the tokenizer's chat
template and the reply streams as it is generated. /image PATH attaches a picture to the next
message (a vision-language model), /reset starts over, /exit (or end of input) leaves."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from jaxtrain.cli import common

EXAMPLES = """examples:
  jaxtrain chat --model runs/sft_example
  jaxtrain chat --model HF_DIR --system "You are terse." --temperature 0.3
  echo "Hello" | jaxtrain chat --model HF_DIR      # one turn from a pipe
  jaxtrain chat --model QWEN3_VL_DIR --image photo.png   # the first message shows the picture"""


def _parser(prog: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description=textwrap.fill("Talk to a model in the terminal: each turn is rendered with the tokenizer's chat "
                             "template and the reply is printed as it is generated. Type /image PATH to attach a "
                             "picture to your next message (vision-language models), /reset to start over, /exit "
                             "or end of input (Ctrl-D) to leave.", 100),
      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_model_args(parser)
  parser.add_argument("--system", default=None, help="a system message at the start of the conversation")
  parser.add_argument("--image", action="append", default=[], metavar="FILE",
                      help="an image shown with the first message (repeatable; vision-language models)")
  common.add_sampling_args(parser, max_new_tokens=256)
  parser.add_argument("--stream-chunk", type=int, default=8,
                      help="tokens generated between two prints of the reply (default 8)")
  return parser


def main(argv: list[str] | None = None, prog: str = "jaxtrain chat") -> int:
  parser = _parser(prog)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  common.check_sampling_args(parser, args)
  if args.stream_chunk < 1:
    parser.error(f"--stream-chunk must be >= 1, got {args.stream_chunk}")
  common.quiet_logging()
  lm = common.load_model(args)
  if lm is None:
    return 1
  if not lm.tokenizer.chat_template:
    print(f"error: the tokenizer of {args.model} has no chat template; pass --chat-template FILE", file=sys.stderr)
    return 1
  if args.image and not lm.takes_pictures:
    print(f"error: {args.model} is a text-only model: it cannot take --image", file=sys.stderr)
    return 1
  interactive = sys.stdin.isatty()
  start = [{"role": "system", "content": args.system}] if args.system else []
  messages = list(start)
  options = common.sampling(args)
  turn = 0
  pending = list(args.image)  # pictures for the next message
  if interactive:
    print("(/image PATH attaches a picture, /reset starts over, /exit leaves)", file=sys.stderr)
  while True:
    if interactive:
      print("> ", end="", flush=True, file=sys.stderr)
    line = sys.stdin.readline()
    if not line:
      break
    text = line.rstrip("\n")
    if text.strip() == "/exit":
      break
    if text.strip() == "/reset":
      messages, pending = list(start), []
      continue
    if text.strip().startswith("/image"):
      path = text.strip()[len("/image"):].strip()
      if not path:
        print("usage: /image PATH", file=sys.stderr)
      elif not lm.takes_pictures:
        print(f"error: {args.model} is a text-only model: it cannot take images", file=sys.stderr)
      else:
        pending.append(os.path.expanduser(path))
      continue
    if not text.strip():
      continue
    content = [*({"type": "image", "image": p} for p in pending), {"type": "text", "text": text}]
    pending = []
    messages.append({"role": "user", "content": content if len(content) > 1 else text})
    reply = []
    try:
      for piece in lm.stream(lm.chat_prompt(messages), chunk=args.stream_chunk,
                             **{**options, "seed": options["seed"] + 1000 * turn}):
        reply.append(piece)
        print(piece, end="", flush=True)
    except ValueError as e:  # an image that cannot be read, or more patches than the model takes
      print(f"error: {e}", file=sys.stderr)
      messages.pop()
      continue
    print(flush=True)
    messages.append({"role": "assistant", "content": "".join(reply)})
    turn += 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
