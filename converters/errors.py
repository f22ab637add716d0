"""The one exception type of the converters: bad input named by file and key."""

from __future__ import annotations

from jaxtrain.config import ConfigError


class ConversionError(ConfigError):
  """A checkpoint or config that cannot be converted exactly. The message names the offending
  file, key, shape or config field. (A ConfigError, so `model.init_from` pointing at a bad
  checkpoint is reported like any other bad config value: message and exit status 2.)"""


def format_problems(header: str, problems: list[str], limit: int = 40) -> str:
  shown = problems[:limit]
  more = len(problems) - len(shown)
  lines = [header] + [f"  - {p}" for p in shown]
  if more > 0:
    lines.append(f"  ... and {more} more")
  return "\n".join(lines)
