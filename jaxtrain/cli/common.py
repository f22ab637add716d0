"""Options shared by the sampling subcommands (generate, chat) and how they load a model."""

from __future__ import annotations

import argparse
import logging
import sys


def quiet_logging() -> None:
  """Warnings of jaxtrain only: the terminal is for the model's text."""
  logging.basicConfig(level=logging.WARNING, format="[jaxtrain] %(message)s", stream=sys.stderr)
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.ERROR)


def add_model_args(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("model")
  group.add_argument("--model", required=True, metavar="PATH",
                     help="a jaxtrain workdir (its latest checkpoint), a checkpoint step directory "
                          "(WORKDIR/checkpoints/N), an import-hf output, or a Hugging Face directory")
  group.add_argument("--tokenizer", default=None, metavar="byte|DIR",
                     help="tokenizer to use instead of the model's own (the HF directory's files, or the one the "
                          "run trained with)")
  group.add_argument("--chat-template", default="", metavar="FILE|TEMPLATE",
                     help="a Jinja chat template (file or text) instead of the tokenizer's")
  group.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                     help="parameter and compute dtype (default float32)")


def add_sampling_args(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
  group = parser.add_argument_group("sampling")
  group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
  group.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
  group.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
  group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def check_sampling_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  if args.max_new_tokens < 1:
    parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if args.temperature < 0:
    parser.error(f"--temperature must be >= 0, got {args.temperature}")
  if args.top_k < 0:
    parser.error(f"--top-k must be >= 0, got {args.top_k}")


def sampling(args: argparse.Namespace) -> dict:
  return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
          "seed": args.seed}


def load_model(args: argparse.Namespace):
  """The TextModel for --model, or None after printing why it cannot be loaded."""
  from jaxtrain.config import ConfigError
  from jaxtrain.converters import ConversionError
  from jaxtrain.textgen import TextModel
  try:
    return TextModel.load(args.model, tokenizer=args.tokenizer, chat_template=args.chat_template, dtype=args.dtype)
  except (ConversionError, ConfigError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return None
