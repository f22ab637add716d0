"""Command line: python -m jaxtrain.main --config configs/X.py [--config.KEY=VALUE ...]
(also `jaxtrain train ...`)."""

from __future__ import annotations

import argparse
import logging
import sys


def _parser(prog: str = "python -m jaxtrain.main") -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description="Train a model from a config file (a Python file whose get_config() returns any part of "
                  "jaxtrain.defaults()). Extra --config.KEY=VALUE arguments override single keys (e.g. "
                  "--config.train.steps=100). Re-running the same command on the same workdir resumes from its "
                  "latest checkpoint. Writes metrics.jsonl, TensorBoard events (tensorboard --logdir WORKDIR), "
                  "config.json and checkpoints/ into config.workdir.",
      epilog="Every key with its default and meaning: docs/config-reference.md. Multi-host launches (SLURM, "
             "Kubernetes, plain hosts): docs/multi-host.md.")
  parser.add_argument("--config", required=True, help="path to a config file defining get_config()")
  multi = parser.add_argument_group(
      "multi-process launch (one process per host, all with the same arguments except --process-id; "
      "defaults: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or SLURM / Open MPI)")
  multi.add_argument("--coordinator", default=None, help="host:port of process 0's coordinator service")
  multi.add_argument("--num-processes", type=int, default=None, help="number of processes in the run")
  multi.add_argument("--process-id", type=int, default=None, help="this process's index in [0, num-processes)")
  return parser


def parse_launch(argv: list[str], prog: str = "python -m jaxtrain.main") -> tuple[argparse.Namespace, list[str]]:
  """(known arguments, --config.KEY=VALUE overrides)."""
  parser = _parser(prog)
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognised argument {item!r}; overrides look like --config.train.steps=100")
    overrides.append(item)
  return args, overrides


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="[jaxtrain] %(message)s", stream=sys.stderr)
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def report(summary: dict, workdir: str) -> str:
  lines = [f"workdir: {workdir}"]
  if summary.get("train_loss") is not None:
    lines.append(f"final train loss: {summary['train_loss']:.4f} nats/token after {summary['steps']} steps")
  if summary.get("rewards"):
    r = summary["rewards"]
    lines.append(f"mean reward:      {r[0]:.3f} at the first rollout, {r[-1]:.3f} at the last "
                 f"(best {max(r):.3f})")
  if summary.get("eval_loss") is not None:
    line = f"held-out loss:    {summary['eval_loss']:.4f} nats/token"
    if summary.get("unigram_loss") is not None:
      line += f" (unigram baseline {summary['unigram_loss']:.4f})"
    lines.append(line)
  if summary.get("tokens_per_sec"):
    what = "rollout tokens/s" if summary.get("rewards") else "tokens/s"
    lines.append(f"throughput:       {summary['tokens_per_sec']:,.0f} {what}")
  if summary.get("sample") is not None:
    lines.append("sample:\n" + summary["sample"])
  return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m jaxtrain.main") -> int:
  setup_logging()
  from jaxtrain.config import ConfigError
  from jaxtrain.parallel import distributed
  from jaxtrain.train.run_config import load_config
  from jaxtrain.train.launch import Trainer
  from jaxtrain.train.trainer import Preempted, exit_code_for

  args, overrides = parse_launch(sys.argv[1:] if argv is None else argv, prog)
  path = args.config
  try:  # before anything asks JAX for devices
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    config = load_config(path, overrides)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    trainer = Trainer(config)  # mesh errors surface here, before anything compiles
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    summary = trainer.fit()
  except Preempted as e:
    print(f"stopped at step {e.args[0]} by signal {trainer.stop_signal}; checkpoint saved in "
          f"{config.workdir}. Re-run the same command to resume.", file=sys.stderr)
    return exit_code_for(trainer.stop_signal)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if trainer.is_main:  # one report per run, not per process
    print(report(summary, config.workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())
