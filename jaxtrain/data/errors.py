"""Errors raised by the data pipeline.

`DataError` is what a user sees: it names the file and line (or row) of the offending record.
`BadRecord` is raised by the format step for one malformed record; the pipeline turns it into a
`DataError` (data.on_bad_record=error) or into a counted skip (data.on_bad_record=skip).
"""

from __future__ import annotations


class DataError(ValueError):
  """A problem with the training data, naming where it is. Picklable (one string argument),
  so it crosses Grain's worker processes intact."""


class BadRecord(Exception):
  """One record cannot be used. `reason` is a short stable tag used to count skips."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail

  def __str__(self) -> str:
    return f"{self.reason}: {self.detail}" if self.detail else self.reason


def bad_record_error(where: str, bad: BadRecord) -> DataError:
  return DataError(f"{where}: bad record ({bad}). Fix the data, or set data.on_bad_record=skip to skip "
                   "such records (they are counted and reported).")
