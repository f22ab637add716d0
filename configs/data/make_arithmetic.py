"""Writes the GRPO quick-check task (configs/grpo_tiny.py): the 55 sums "a+b=" of digits whose
answer is a single digit (a + b <= 9), which a reward can verify. Deterministic; the output is
committed next to this script.

    python configs/data/make_arithmetic.py   # -> configs/data/arithmetic.jsonl
"""

import json
import os


def main() -> None:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic.jsonl")
  with open(path, "w") as f:
    for a in range(10):
      for b in range(10 - a):
        f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


if __name__ == "__main__":
  main()
