"""Writes configs/data/preference_example.jsonl: arithmetic preference pairs in TRL's two
formats, for configs/dpo_tiny.py and the tests.

Each pair asks for a small sum; the chosen answer is right, the rejected one is a refusal (two
in three pairs) or off by 1-9.
Even records are standard ({"prompt", "chosen", "rejected"} strings), odd ones conversational
(chat-message lists). Run: python configs/data/make_preference.py [N] [PATH]
"""

import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def pairs(n: int, seed: int = 0):
  rng = random.Random(seed)
  for i in range(n):
    a, b = rng.randint(1, 49), rng.randint(1, 49)
    right = a + b
    wrong = "I don't know." if rng.random() < 2 / 3 else f"{a + b + rng.choice([-1, 1]) * rng.randint(1, 9)}"
    question = f"What is {a} + {b}?"
    if i % 2 == 0:
      yield {"prompt": f"Q: {question}\nA:", "chosen": f" {right}", "rejected": f" {wrong}"}
    else:
      yield {"prompt": [{"role": "user", "content": question}],
             "chosen": [{"role": "assistant", "content": f"{a} + {b} = {right}"}],
             "rejected": [{"role": "assistant", "content": wrong if wrong[0] == "I" else f"{a} + {b} = {wrong}"}]}


def write(path: str, n: int = 2000) -> str:
  with open(path, "w") as f:
    for record in pairs(n):
      f.write(json.dumps(record) + "\n")
  return path


if __name__ == "__main__":
  count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
  print(write(sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "preference_example.jsonl"), count))
