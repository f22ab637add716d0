"""Batched decoding throughput: jaxtrain's sampler vs `transformers` `generate()` on the same
weights (a random Hugging Face model written locally and loaded by both), same prompts (a
batch of different lengths, left-padded), greedy, a fixed number of new tokens (no EOS), fp32.

    python experiments/bench_sampler.py                          # CPU, quickstart-sized MoE
    python experiments/bench_sampler.py --preset cpu-dense --batch 16 --new-tokens 256
    python experiments/bench_sampler.py --preset gpu-moe         # on a GPU (bf16 on both sides)

Reports generated tokens/s (batch * new tokens / wall time of the best of --repeats calls after
a warm-up call: the best is the least disturbed by other load on shared machines), jaxtrain's
first-call compile time, and the share of greedy tokens on which both agree. With --out
writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

PRESETS = {
    "cpu-moe": ("qwen3_moe", dict(hidden_size=128, intermediate_size=512, moe_intermediate_size=256,
                                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                  num_experts=8, num_experts_per_tok=2, vocab_size=272), "float32"),
    "cpu-dense": ("qwen3", dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                                num_key_value_heads=4, head_dim=32, vocab_size=272), "float32"),
    "gpu-moe": ("qwen3_moe", dict(hidden_size=1024, intermediate_size=4096, moe_intermediate_size=512,
                                  num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                                  num_experts=64, num_experts_per_tok=8, vocab_size=32768), "bfloat16"),
}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="cpu-moe", choices=sorted(PRESETS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--min-prompt", type=int, default=16)
  p.add_argument("--max-prompt", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3, help="timed calls per framework; the best counts")
  p.add_argument("--out", default=os.environ.get("OUT"))
  args = p.parse_args()

  import numpy as np
  import torch
  import transformers

  import jaxtrain
  from jaxtrain.generate.sampler import Sampler, SamplingParams

  model_type, kwargs, dtype = PRESETS[args.preset]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, kwargs["vocab_size"], int(n)).tolist()
             for n in rng.integers(args.min_prompt, args.max_prompt + 1, args.batch)]
  with tempfile.TemporaryDirectory() as hf_dir:
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, max_position_embeddings=4096, **kwargs)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(hf_dir)
    hf = hf.to(device=device, dtype=getattr(torch, dtype))
    model = jaxtrain.from_pretrained(hf_dir, dtype=dtype)

  params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0)
  sampler = Sampler(model, eos_ids=())
  t0 = time.perf_counter()
  sampler.generate(prompts, params)
  first = time.perf_counter() - t0
  ours_s = float("inf")
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    ours = sampler.generate(prompts, params)
    ours_s = min(ours_s, time.perf_counter() - t0)

  P = max(map(len, prompts))
  ids = torch.zeros((len(prompts), P), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, pr in enumerate(prompts):
    ids[i, P - len(pr):] = torch.tensor(pr)
    mask[i, P - len(pr):] = 1
  ids, mask = ids.to(device), mask.to(device)
  hf.generation_config.eos_token_id = None
  gen = dict(attention_mask=mask, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
             pad_token_id=0)
  with torch.no_grad():
    hf.generate(ids, **gen)
    if device == "cuda":
      torch.cuda.synchronize()
    hf_s = float("inf")
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      theirs = hf.generate(ids, **gen)[:, P:].cpu().numpy()
      if device == "cuda":
        torch.cuda.synchronize()
      hf_s = min(hf_s, time.perf_counter() - t0)

  tokens = args.batch * args.new_tokens
  agree = float(np.mean(np.asarray([c.token_ids for c in ours.completions]) == theirs))
  result = {"preset": args.preset, "device": device, "dtype": dtype, "batch": args.batch,
            "new_tokens": args.new_tokens, "prompt_lengths": [len(x) for x in prompts],
            "jaxtrain_tokens_per_sec": tokens / ours_s, "transformers_tokens_per_sec": tokens / hf_s,
            "speedup": hf_s / ours_s, "jaxtrain_first_call_s": first, "greedy_agreement": agree}
  print(f"{args.preset} on {device} ({dtype}), batch {args.batch}, {args.new_tokens} new tokens:")
  print(f"  jaxtrain sampler      {result['jaxtrain_tokens_per_sec']:10,.0f} tokens/s "
        f"(first call incl. compile {first:.1f} s)")
  print(f"  transformers generate {result['transformers_tokens_per_sec']:10,.0f} tokens/s")
  print(f"  speedup {result['speedup']:.2f}x; greedy tokens in agreement: {agree:.1%}")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bench_sampler_{args.preset}.json"), "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
