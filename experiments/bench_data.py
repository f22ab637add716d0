"""Data pipeline throughput: tokens/s of packed batches, per source, format and tokenizer.

    python experiments/bench_data.py [--seconds 3] [--batch 16] [--seq-len 1024]

Measures, for each pipeline: build time, time to the first batch, and steady-state tokens/s
(non-padding tokens of packed batches, after the first batch and after every worker process
has delivered one) plus packing efficiency. Runs in
well under a minute on a 2-core CPU; everything is local (the stdlib corpus, the repo's SFT
example, a BPE tokenizer trained on the spot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
          "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_bpe(directory: str) -> str:
  """A byte-level BPE tokenizer (4k vocab) trained on a slice of the stdlib, with ChatML."""
  import sysconfig

  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  from jaxtrain.data.sources import read_python_source, stdlib_files

  files = stdlib_files(sysconfig.get_paths()["stdlib"])[:120]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator((read_python_source(p) for p, _ in files), trainer)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHATML}, f)
  return directory


def make_chat_jsonl(path: str, copies: int) -> str:
  with open(os.path.join(REPO, "configs", "data", "sft_example.jsonl")) as f:
    lines = f.read().splitlines()
  with open(path, "w") as f:
    for _ in range(copies):
      f.write("\n".join(lines) + "\n")
  return path


def make_tokens(path: str, n_tokens: int, vocab: int) -> str:
  import numpy as np

  from jaxtrain.data import write_tokens
  rng = np.random.default_rng(0)
  lengths = rng.integers(50, 3000, size=n_tokens // 1500)
  write_tokens(path, [rng.integers(0, vocab, size=n) for n in lengths])
  return path


def measure(name: str, data: dict, args) -> dict:
  from jaxtrain.train.run_config import load_config
  from jaxtrain.data import build_pipeline, build_tokenizer

  config = load_config(base={"data": {"seq_len": args.seq_len, "prefetch": 2, **data},
                             "train": {"global_batch": args.batch}, "model": {"vocab_size": 8192}})
  t0 = time.perf_counter()
  tok = build_tokenizer(config.data)
  it = build_pipeline(config, "train", tok)
  t1 = time.perf_counter()
  next(it)
  first = time.perf_counter() - t1
  for _ in range(2 * config.data.workers):  # until every worker process has delivered
    next(it)
  t2 = time.perf_counter()
  tokens0 = it.stats()["tokens"]
  batches = 0
  while time.perf_counter() - t2 < args.seconds and batches < args.max_batches:
    next(it)
    batches += 1
  t3 = time.perf_counter()
  stats = it.stats()
  it.close()
  return {"pipeline": name, "tokenizer": "byte" if tok.name_or_path == "byte" else "bpe-4k",
          "workers": config.data.workers, "threads": config.data.threads, "build_s": t1 - t0,
          "first_batch_s": first, "batches": batches, "tokens_per_s": (stats["tokens"] - tokens0) / (t3 - t2),
          "packing": stats["packing_efficiency"], "skipped": stats["bad_records_skipped"]}


def stall(data: dict, args, step_s: float = 0.05, steps: int = 20) -> tuple[float, float]:
  """Mean seconds `next()` blocks per step when a (simulated) train step of `step_s` runs
  between batches, without and with the background prefetch thread."""
  from jaxtrain.train.run_config import load_config
  from jaxtrain.data import build_pipeline

  waits = []
  for prefetch in (0, 2):
    config = load_config(base={"data": {"seq_len": args.seq_len, "prefetch": prefetch, **data},
                               "train": {"global_batch": args.batch}})
    it = build_pipeline(config, "train")
    next(it)
    total = 0.0
    for _ in range(steps):
      time.sleep(step_s)  # the accelerator step (JAX releases the GIL while it runs)
      t = time.perf_counter()
      next(it)
      total += time.perf_counter() - t
    it.close()
    waits.append(total / steps)
  return waits[0], waits[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=1.5, help="steady-state seconds per pipeline")
  parser.add_argument("--max-batches", type=int, default=400)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq-len", type=int, default=1024)
  parser.add_argument("--no-workers", action="store_true", help="skip the worker-process rows")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
    os.makedirs(os.path.join(tmp, "bpe"))
    bpe = make_bpe(os.path.join(tmp, "bpe"))
    chat = make_chat_jsonl(os.path.join(tmp, "chat.jsonl"), copies=200)
    tokens = make_tokens(os.path.join(tmp, "tokens.npy"), n_tokens=5_000_000, vocab=4096)
    stdlib = {"sources": {"main": {"kind": "python_stdlib"}}}
    chat_src = {"sources": {"chat": {"kind": "jsonl", "path": chat, "format": "chat"}}}
    runs = [
        ("stdlib text", {**stdlib}),
        ("stdlib text", {**stdlib, "tokenizer": bpe}),
        ("stdlib text", {**stdlib, "tokenizer": bpe, "threads": 2}),
        ("chat jsonl", {**chat_src}),
        ("chat jsonl", {**chat_src, "tokenizer": bpe}),
        ("tokens .npy", {"sources": {"tok": {"kind": "tokens", "path": tokens}}, "tokenizer": bpe}),
    ]
    if not args.no_workers:
      runs += [("stdlib text", {**stdlib, "tokenizer": bpe, "workers": 2}),
               ("chat jsonl", {**chat_src, "tokenizer": bpe, "workers": 2})]
    rows = [measure(name, data, args) for name, data in runs]
    no_prefetch, prefetch = stall(stdlib, args)

  print(f"\ndata pipeline throughput: batch {args.batch} x seq_len {args.seq_len}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f}), {args.seconds:g} s per row (steady state)\n")
  header = f"{'pipeline':<12} {'tokenizer':<9} {'workers':>7} {'threads':>7} {'build s':>8} {'1st batch s':>11} " \
           f"{'batches':>7} {'tokens/s':>10} {'packing':>8}"
  print(header)
  print("-" * len(header))
  for r in rows:
    print(f"{r['pipeline']:<12} {r['tokenizer']:<9} {r['workers']:>7} {r['threads']:>7} {r['build_s']:>8.2f} "
          f"{r['first_batch_s']:>11.2f} {r['batches']:>7} {r['tokens_per_s']:>10,.0f} {100 * r['packing']:>7.1f}%")
  print(f"\ndata wait per step (stdlib text, byte, 50 ms simulated step): {1e3 * no_prefetch:.1f} ms without "
        f"prefetch, {1e3 * prefetch:.1f} ms with data.prefetch=2")


if __name__ == "__main__":
  main()
