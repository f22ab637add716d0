"""Command line: what fits, and what is fastest, before a single device is touched.

    python -m jaxtrain.plan --config configs/qwen3_30b_a3b_sft.py --devices 8 --device-kind H100
    python -m jaxtrain.plan --config configs/X.py --hosts 32 --device-kind H800 --config.data.seq_len=65536

By default the mesh, remat policy and micro-batch split are all the planner's to choose (as if
the config said "auto"); --as-configured keeps what the config fixes. The config as written is
also evaluated when it is fully specified.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

AUTO_OVERRIDES = ["--config.mesh=auto", "--config.model.remat=auto", "--config.train.micro_batches=auto"]


def parser(prog: str = "python -m jaxtrain.plan") -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="config file (get_config()); --config.KEY=VALUE overrides follow")
  p.add_argument("--devices", type=int, default=None, help="devices in all (default: hosts x devices per node, "
                 "or this machine's devices)")
  p.add_argument("--hosts", type=int, default=None, help="nodes (default 1); with --devices, sets devices per node")
  p.add_argument("--device-kind", default=None, help="H100, H200, H800, A100, A800, B200, L40S, 'TPU v5p', cpu, ... "
                 "(default: this machine's)")
  p.add_argument("--device-memory", type=float, default=None, help="GiB per device (default: the kind's)")
  p.add_argument("--as-configured", action="store_true", help="keep the mesh / remat / micro-batches the config fixes")
  p.add_argument("--top", type=int, default=8, help="candidates listed besides the recommendation")
  p.add_argument("--json", action="store_true", help="machine-readable output")
  p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
  return p


def _device(args):
  from jaxtrain.plan import hardware
  if args.device_kind is None:
    import jax
    n = args.devices or jax.device_count()
    device = hardware.local_device(n)
    if args.device_memory is not None:
      device = dataclasses.replace(device, memory=args.device_memory * hardware.GiB)
    return device, n
  device = hardware.lookup(args.device_kind, args.device_memory)
  if args.devices is None:
    n = device.per_node * (args.hosts or 1)
  else:
    n = args.devices
    if args.hosts:
      device = dataclasses.replace(device, per_node=max(n // args.hosts, 1))
  return device, n


def main(argv: list[str] | None = None, prog: str = "python -m jaxtrain.plan") -> int:
  import logging
  logging.basicConfig(level=logging.WARNING, format="[jaxtrain.plan] %(message)s", stream=sys.stderr)
  from jaxtrain.config import ConfigError
  from jaxtrain.plan.planner import make_plan
  from jaxtrain.plan.report import format_plan
  from jaxtrain.plan.resolve import fit_hints, fixed_candidate, has_auto
  from jaxtrain.plan.workload import Workload
  from jaxtrain.train.run_config import load_config

  args, rest = parser(prog).parse_known_args(sys.argv[1:] if argv is None else argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser(prog).error(f"unrecognised arguments {bad}; overrides look like --config.data.seq_len=8192")
  try:
    written = load_config(args.config, rest, init_from_must_exist=False)
    config = written if args.as_configured else load_config(args.config, rest + AUTO_OVERRIDES,
                                                            init_from_must_exist=False)
    device, devices = _device(args)
  except (ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workload = Workload.from_config(config)
  progress = None if args.quiet else (lambda line: print(f"[plan] {line}", file=sys.stderr, flush=True))
  plan = make_plan(workload, devices, device, progress=progress)
  as_written = None
  if not has_auto(written):
    try:
      from jaxtrain.plan.planner import Option, _time
      from jaxtrain.plan.memory import predict
      c = fixed_candidate(written, devices)
      wl = Workload.from_config(written)
      mem = predict(wl, c, device.platform)
      as_written = Option(c, mem, _time(wl, c, device, mem))
    except ConfigError as e:
      as_written = str(e)
  if args.json:
    print(json.dumps(_as_json(plan, as_written), indent=1))
  else:
    hints = None
    if plan.best is None and plan.closest is not None:
      hints = fit_hints(workload, plan.closest.candidate, device, devices, plan.budget)
    print(format_plan(plan, top=args.top, hints=hints))
    if as_written is not None:
      from jaxtrain.plan.memory import gib
      if isinstance(as_written, str):
        print(f"\nThe config as written cannot run on {devices} devices: {as_written}")
      else:
        fits = "fits" if as_written.memory.total <= plan.budget else "does NOT fit"
        print(f"\nThe config as written ({as_written.candidate.describe()}): {gib(as_written.memory.total)} per "
              f"device ({fits}), {as_written.step:.3f} s per step, "
              f"{as_written.time.tokens_per_sec_per_device:,.0f} tokens/s per device")
  return 0 if plan.best is not None else 1


def _option_json(o):
  c, m, t = o.candidate, o.memory, o.time
  return {"mesh": c.mesh.shape, "remat": c.remat, "micro_batches": c.micro_batches, "loss_vocab_chunk": c.vocab_chunk,
          "ffn_chunk": c.ffn_chunk,
          "memory": m.as_dict(), "step_time": t.step, "compute_time": t.compute, "overlapped": t.overlapped,
          "exposed": t.exposed, "tokens_per_sec_per_device": t.tokens_per_sec_per_device}


def _as_json(plan, as_written):
  out = {"devices": plan.devices, "device": plan.device.kind, "budget": plan.budget,
         "options": [_option_json(o) for o in plan.options],
         "rejected": [{"what": w, "why": y} for w, y in plan.rejected]}
  if as_written is not None and not isinstance(as_written, str):
    out["as_configured"] = _option_json(as_written)
  return out


if __name__ == "__main__":
  sys.exit(main())
