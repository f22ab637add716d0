"""The `jaxtrain` command: one entry point for training, weight conversion, sampling and evaluation.

  jaxtrain train --config configs/quickstart.py [--config.KEY=VALUE ...]
  jaxtrain convert import-hf --hf HF_DIR --out CKPT_DIR
  jaxtrain convert export-hf --ckpt RUN_WORKDIR --out HF_DIR
  jaxtrain generate --model RUN_OR_HF_DIR --prompt "def "
  jaxtrain chat --model RUN_OR_HF_DIR
  jaxtrain eval --model RUN_OR_HF_DIR [--config DATA_CONFIG.py]
  jaxtrain plan ...

Each subcommand is one entry of `COMMANDS`: a function `main(argv, prog=...)` returning the exit
status, or any module that runs with `python -m`. `python -m jaxtrain.main` and `python -m jaxtrain.converters`
are the same programs as `train` and `convert`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import runpy
import sys

# name -> (entry, one-line help). An entry "package.module:function" is called as
# function(argv, prog=...) and returns the exit status; a plain "package.module" runs as
# `python -m package.module` with the arguments.
COMMANDS = {
    "train": ("jaxtrain.main:main", "train (or resume) a run from a config file"),
    "convert": ("jaxtrain.converters.__main__:main", "convert weights: import-hf (HF -> jaxtrain), export-hf (back)"),
    "generate": ("jaxtrain.cli.generate:main", "complete prompts with a trained model or an HF directory"),
    "chat": ("jaxtrain.cli.chat:main", "talk to a model in the terminal (chat template, streamed replies)"),
    "eval": ("jaxtrain.cli.evaluate:main", "held-out loss and perplexity of a checkpoint on a data config"),
    "plan": ("jaxtrain.plan", "memory and speed plan for a config (mesh, remat)"),
}


def _parser() -> argparse.ArgumentParser:
  from jaxtrain import __version__
  parser = argparse.ArgumentParser(
      prog="jaxtrain", description="JAX training engine for Mixture-of-Experts language models.",
      epilog="Run 'jaxtrain COMMAND --help' for a command's options.")
  parser.add_argument("--version", action="version", version=f"jaxtrain {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name, (_, help_text) in COMMANDS.items():
    sub.add_parser(name, help=help_text, add_help=False)
  return parser


def _missing(name: str, module_name: str) -> bool:
  """True (with a message) when this installation lacks the subcommand's module."""
  try:
    found = importlib.util.find_spec(module_name) is not None
  except ModuleNotFoundError:  # a parent package is missing
    found = False
  if not found:
    print(f"jaxtrain {name}: not available in this installation ({module_name} is missing; it ships with a "
          "newer jaxtrain)", file=sys.stderr)
  return not found


def run(name: str, argv: list[str]) -> int:
  entry = COMMANDS[name][0]
  module_name, _, function = entry.partition(":")
  if _missing(name, module_name):
    return 2
  prog = f"jaxtrain {name}"
  try:
    if function:
      return int(getattr(importlib.import_module(module_name), function)(argv, prog=prog) or 0)
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
      runpy.run_module(module_name, run_name="__main__", alter_sys=True)
    finally:
      sys.argv = saved
    return 0
  except SystemExit as e:  # argparse (--help, bad arguments), or sys.exit in a module
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in COMMANDS:
    return run(argv[0], argv[1:])
  parser = _parser()
  if not argv:
    parser.print_help(sys.stderr)
    return 2
  parser.parse_args(argv)  # --help / --version, or an error naming the valid commands
  return 2


__all__ = ["COMMANDS", "main", "run"]
