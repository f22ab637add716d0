"""Weight conversion CLI.

  python -m jaxtrain.converters import-hf --hf HF_DIR --out CKPT_DIR [--force]
  python -m jaxtrain.converters export-hf --ckpt CKPT_OR_WORKDIR --out HF_DIR
                                          [--dtype bfloat16] [--step N] [--max-shard-size 5GB] [--force]
                                          [--adapter | --merge]   (LoRA runs: PEFT adapter / merged weights)

Exit status: 0 on success, 1 when the input cannot be converted (the message names the file,
key or config field), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv, prog: str = "python -m jaxtrain.converters"):
  parser = argparse.ArgumentParser(prog=prog, description="Convert between Hugging Face and jaxtrain checkpoints.")
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import-hf", help="HF directory -> jaxtrain checkpoint (usable as model.init_from)")
  imp.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
  imp.add_argument("--out", required=True, help="output directory for the jaxtrain checkpoint")
  imp.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
  imp.add_argument("--no-progress", action="store_true")
  exp = sub.add_parser("export-hf", help="jaxtrain checkpoint or workdir -> HF directory")
  exp.add_argument("--ckpt", required=True, help="workdir, its checkpoints/ directory, a step directory, or an "
                                                 "import-hf output")
  exp.add_argument("--out", required=True, help="output Hugging Face directory")
  exp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written tensors (default float32: the exact fp32 master weights)")
  exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  exp.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB")
  exp.add_argument("--force", action="store_true", help="overwrite the files of an earlier export in --out")
  mode = exp.add_mutually_exclusive_group()
  mode.add_argument("--adapter", action="store_true", help="LoRA runs: write a PEFT adapter directory "
                    "(adapter_config.json + adapter_model.safetensors) for peft.PeftModel.from_pretrained")
  mode.add_argument("--merge", action="store_true", help="LoRA runs: write full weights with the adapters merged")
  exp.add_argument("--no-progress", action="store_true")
  return parser.parse_args(argv)


def main(argv=None, prog: str = "python -m jaxtrain.converters") -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv, prog)
  logging.basicConfig(level=logging.INFO, format="[jaxtrain.converters] %(message)s", stream=sys.stderr)
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  from jaxtrain.config import ConfigError
  from jaxtrain.converters import export_hf, import_hf
  from jaxtrain.converters.errors import ConversionError
  try:
    if args.command == "import-hf":
      out = import_hf(args.hf, args.out, force=args.force, progress=not args.no_progress)
      print(f"wrote jaxtrain checkpoint {out} (use it as model.init_from, or export-hf --ckpt {out})")
    elif args.adapter or args.merge:
      # LoRA runs: posttrain/peft_io.py (this entry point sits above the layers, like main.py).
      from jaxtrain.posttrain import peft_io
      if args.adapter:
        out = peft_io.export_adapter(args.ckpt, args.out, step=args.step, dtype=args.dtype, force=args.force)
        print(f"wrote PEFT adapter {out}")
      else:
        out = peft_io.export_merged(args.ckpt, args.out, step=args.step, dtype=args.dtype, force=args.force,
                                    max_shard_size=args.max_shard_size, progress=not args.no_progress)
        print(f"wrote Hugging Face checkpoint {out} (LoRA adapters merged)")
    else:
      out = export_hf(args.ckpt, args.out, dtype=args.dtype, step=args.step, force=args.force,
                      max_shard_size=args.max_shard_size, progress=not args.no_progress)
      print(f"wrote Hugging Face checkpoint {out}")
  except (ConversionError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
