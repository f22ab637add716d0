"""jaxtrain eval: held-out loss and perplexity of a model on a data config, without training."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap

EXAMPLES = """examples:
  jaxtrain eval --model runs/quickstart                       # the run's own held-out data
  jaxtrain eval --model runs/quickstart/checkpoints/200       # one checkpoint
  jaxtrain eval --model HF_DIR --config configs/sft_example.py --config.eval.batches=16

The held-out split is the data config's: each source's held-out documents (holdout=hash,
data.eval_fraction), or all of a source with --config.data.sources.NAME.holdout=all."""


def _parser(prog: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog, description=textwrap.fill("Held-out loss (nats/token) and perplexity of a model on the held-out split of a data "
                             "config. Extra --config.KEY=VALUE arguments override single keys.", 100),
      epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, metavar="PATH",
                      help="a jaxtrain workdir (latest checkpoint), a checkpoint step directory, an import-hf output, "
                           "or a Hugging Face directory")
  parser.add_argument("--config", default=None, metavar="FILE",
                      help="config file for the data (and batch size); default: the config the run trained with. "
                           "The tokenizer is the model's own (its HF directory's) unless --config.data.tokenizer=... "
                           "is given")
  parser.add_argument("--batches", type=int, default=None, help="held-out batches to evaluate (eval.batches)")
  parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
  return parser


def _model_tokenizer(path: str) -> str | None:
  """The HF tokenizer directory that comes with the model at `path`, if any."""
  from jaxtrain.converters.hf_config import is_hf_dir
  from jaxtrain.converters.load import checkpoint_model_section
  if is_hf_dir(path):
    return path if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
  init_from = (checkpoint_model_section(path)[3].get("model") or {}).get("init_from") or ""
  return init_from if os.path.isfile(os.path.join(init_from, "tokenizer.json")) else None


def build_config(args: argparse.Namespace, overrides: list[str]):
  from jaxtrain.converters.hf_config import is_hf_dir
  from jaxtrain.converters.load import checkpoint_model_section
  from jaxtrain.train.run_config import load_config
  path = os.path.abspath(os.path.expanduser(args.model))
  overrides = [*overrides, f"--config.model.init_from={path}"]
  if args.batches is not None:
    overrides.append(f"--config.eval.batches={args.batches}")
  base = None
  if args.config is None:
    if is_hf_dir(path):
      raise ValueError(f"{args.model} is a Hugging Face directory: name the data to evaluate on with --config FILE")
    base = checkpoint_model_section(path)[3]
    if "data" not in base:
      raise ValueError(f"{args.model} holds no data config (an import-hf output?): pass --config FILE")
  tokenizer = _model_tokenizer(path)
  if tokenizer and not any(o.startswith("--config.data.tokenizer=") for o in overrides):
    overrides.append(f"--config.data.tokenizer={tokenizer}")  # the model's own, as generate and chat use
  return load_config(args.config, overrides, base=base)


def main(argv: list[str] | None = None, prog: str = "jaxtrain eval") -> int:
  from jaxtrain.main import setup_logging
  parser = _parser(prog)
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments {bad}; overrides look like --config.eval.batches=8")
  setup_logging()
  from jaxtrain.config import ConfigError
  from jaxtrain.converters import ConversionError
  from jaxtrain.train.trainer import Trainer
  try:
    config = build_config(args, rest)
    trainer = Trainer(config)
    result = trainer.evaluate_pretrained()
  except ConversionError as e:  # the model cannot be read (a ConfigError too)
    print(f"error: {e}", file=sys.stderr)
    return 1
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if not trainer.is_main:
    return 0
  result = {"model": args.model, **result, "perplexity": math.exp(min(result["eval_loss"], 700.0))}
  if result["eval_tokens"] == 0:
    print("error: the held-out split is empty (no held-out documents in the data config)", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(result))
  else:
    print(f"held-out loss: {result['eval_loss']:.4f} nats/token, perplexity {result['perplexity']:.3f} "
          f"({result['eval_tokens']:,} tokens)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
