"""Stop strings: where a completion's decoded text first contains one of them.

Token boundaries rarely line up with a stop string, so the text is decoded and the completion
is cut after the first token whose prefix text contains the string (found by bisection: a
longer prefix's text contains a shorter one's)."""

from __future__ import annotations

from typing import Any, Sequence


def _first(text: str, stops: Sequence[str]) -> int | None:
  hits = [text.find(s) for s in stops if s and s in text]
  return min(hits) if hits else None


def find_stop(tokenizer: Any, ids: Sequence[int], stops: Sequence[str]) -> tuple[int, int] | None:
  """(number of tokens up to and including the one completing the first stop string, the
  character offset where that stop string starts in their text), or None when no stop string
  occurs."""
  if not stops or not ids or _first(tokenizer.decode(ids), stops) is None:
    return None
  lo, hi = 1, len(ids)  # the smallest prefix length whose text contains a stop string
  while lo < hi:
    mid = (lo + hi) // 2
    if _first(tokenizer.decode(ids[:mid]), stops) is None:
      lo = mid + 1
    else:
      hi = mid
  return lo, _first(tokenizer.decode(ids[:lo]), stops)
