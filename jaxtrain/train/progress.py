"""Terminal progress: a tqdm bar with loss and tokens/s, or plain log lines when disabled."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm

log = logging.getLogger("jaxtrain")


def _fmt(record: dict[str, Any]) -> dict[str, str]:
  out = {}
  if "loss" in record:
    out["loss"] = f"{record['loss']:.4f}"
  if "reward" in record:  # RL runs
    out["reward"] = f"{record['reward']:.3f}"
  if "tokens_per_sec" in record:
    out["tok/s"] = f"{record['tokens_per_sec']:,.0f}"
  if "moe/load_cv" in record:
    cv = record["moe/load_cv"]
    out["load_cv"] = f"{sum(cv) / len(cv):.2f}" if isinstance(cv, list) else f"{cv:.2f}"
  return out


class Progress:

  def __init__(self, total: int, start: int, *, enabled: bool):
    self.enabled = enabled
    self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                    file=sys.stderr) if enabled else None
    self.step = start

  def update(self, step: int, record: dict[str, Any] | None = None) -> None:
    if self.bar is not None:
      self.bar.update(step - self.step)
      if record:
        self.bar.set_postfix(_fmt(record), refresh=True)
    elif record:
      log.info("step %d %s", step, " ".join(f"{k}={v}" for k, v in _fmt(record).items()))
    self.step = step

  def note(self, text: str) -> None:
    if self.bar is not None:
      self.bar.write(text)
    else:
      log.info(text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
