"""Command line: python -m jaxtrain.main --config configs/X.py [--config.KEY=VALUE ...]"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python -m jaxtrain.main",
      description="Train a model from an ml_collections config file. Extra --config.KEY=VALUE "
                  "arguments override single keys (e.g. --config.train.steps=100).")
  parser.add_argument("--config", required=True, help="path to a config file defining get_config()")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r}; overrides look like --config.train.steps=100")
    overrides.append(item)
  return args.config, overrides


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="[jaxtrain] %(message)s", stream=sys.stderr)
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def report(summary: dict, workdir: str) -> str:
  lines = [f"workdir: {workdir}"]
  if summary.get("train_loss") is not None:
    lines.append(f"final train loss: {summary['train_loss']:.4f} nats/token after {summary['steps']} steps")
  if summary.get("eval_loss") is not None:
    line = f"held-out loss:    {summary['eval_loss']:.4f} nats/token"
    if summary.get("unigram_loss") is not None:
      line += f" (unigram baseline {summary['unigram_loss']:.4f})"
    lines.append(line)
  if summary.get("tokens_per_sec"):
    lines.append(f"throughput:       {summary['tokens_per_sec']:,.0f} tokens/s")
  if summary.get("sample") is not None:
    lines.append("sample:\n" + summary["sample"])
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  setup_logging()
  from jaxtrain.config import ConfigError, load_config
  from jaxtrain.train.trainer import Preempted, Trainer, exit_code_for

  path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config = load_config(path, overrides)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  trainer = Trainer(config)
  try:
    summary = trainer.fit()
  except Preempted as e:
    print(f"stopped at step {e.args[0]} by signal {trainer.stop_signal}; checkpoint saved in "
          f"{config.workdir}. Re-run the same command to resume.", file=sys.stderr)
    return exit_code_for(trainer.stop_signal)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report(summary, config.workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
