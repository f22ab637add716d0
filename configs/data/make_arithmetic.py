"""Writes the GRPO quick-check task (configs/grpo_tiny.py): single-digit sums "a+b=" whose
answer a reward can verify. Deterministic; the output is committed next to this script.

    python configs/data/make_arithmetic.py   # -> configs/data/arithmetic.jsonl
"""

import json
import os


def main() -> None:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic.jsonl")
  with open(path, "w") as f:
    for a in range(10):
      for b in range(10):
        f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


if __name__ == "__main__":
  main()
