"""`DataIterator`: the pipeline as the trainer sees it — contract batches, counters, and an
exact, JSON-serialisable state.

Grain's iterator state (nested dicts of ints, with a few tuples / bytes / non-string keys) is
encoded losslessly into JSON-safe values; the state also records a fingerprint of the settings
that decide batch order, so resuming a different pipeline is an error instead of a silent
change of data.
"""

from __future__ import annotations

import atexit
import base64
import copy
import weakref
from typing import Any

import numpy as np

from jaxtrain.data import stats as stats_lib
from jaxtrain.data.errors import DataError
from jaxtrain.data.vision.batch import VISION_KEYS

STATE_VERSION = 1
CONTRACT_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")



def encode_state(value: Any) -> Any:
  """Grain iterator state -> JSON-safe value (tuples, bytes, numpy and non-str keys tagged)."""
  if isinstance(value, dict):
    if all(isinstance(k, str) for k in value):
      return {k: encode_state(v) for k, v in value.items()}
    return {"__items__": [[encode_state(k), encode_state(v)] for k, v in value.items()]}
  if isinstance(value, tuple):
    return {"__tuple__": [encode_state(v) for v in value]}
  if isinstance(value, list):
    return [encode_state(v) for v in value]
  if isinstance(value, (bytes, bytearray)):
    return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
  if isinstance(value, np.ndarray):
    return encode_state(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  if hasattr(value, "to_dict"):  # ConfigDict
    return encode_state(value.to_dict())
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(f"cannot serialise iterator state value of type {type(value).__name__}")


def decode_state(value: Any) -> Any:
  if isinstance(value, dict):
    if set(value) == {"__items__"}:
      return {decode_state(k): decode_state(v) for k, v in value["__items__"]}
    if set(value) == {"__tuple__"}:
      return tuple(decode_state(v) for v in value["__tuple__"])
    if set(value) == {"__bytes__"}:
      return base64.b64decode(value["__bytes__"])
    return {k: decode_state(v) for k, v in value.items()}
  if isinstance(value, list):
    return [decode_state(v) for v in value]
  return value


_LIVE: "weakref.WeakSet[DataIterator]" = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
  # Stop prefetch threads and worker processes before interpreter teardown (Grain's own
  # finalisers fail noisily once module globals are gone).
  for it in list(_LIVE):
    try:
      it.close()
    except Exception:  # noqa: BLE001 - best effort at exit
      pass


class DataIterator:
  """Contract batches of one process, with counters and exact resume."""

  def __init__(self, iterator, fingerprint: dict, index_stats: dict, info: dict,
               keys: tuple[str, ...] = CONTRACT_KEYS):
    _LIVE.add(self)
    self.keys = keys
    self._it = iterator
    self._fingerprint = fingerprint
    self._index_stats = index_stats
    self.info = info
    self._stats = stats_lib.PipelineStats()
    # Host-side rewrite of each batch into what the train step takes (set by the training
    # objective: a vision-language model's per-row inputs); None = the batch as assembled.
    self.convert = None

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      raise ValueError("this data iterator is closed")
    batch = next(self._it)
    self._stats.add(batch.pop("_stats"))
    out = {k: np.array(batch[k], dtype=np.int32) if k in CONTRACT_KEYS else np.array(batch[k]) for k in self.keys}
    for k in VISION_KEYS:  # vision runs (data/vision/batch.py)
      if k in batch:
        out[k] = np.asarray(batch[k], dtype=np.float32 if k == "pixel_values" else np.int32)
    return out if self.convert is None else self.convert(out)

  def get_state(self) -> dict:
    return {"version": STATE_VERSION, "fingerprint": copy.deepcopy(self._fingerprint),
            "grain": encode_state(self._it.get_state()), "stats": self._stats.state()}

  def set_state(self, state: dict) -> None:
    if state.get("version") != STATE_VERSION:
      raise DataError(f"data iterator state version {state.get('version')!r} is not {STATE_VERSION}")
    saved = state.get("fingerprint", {})
    if saved != self._fingerprint:
      changed = sorted(k for k in set(saved) | set(self._fingerprint) if saved.get(k) != self._fingerprint.get(k))
      raise DataError("the data iterator state was saved by a different data pipeline (changed: "
                      f"{', '.join(changed)}); it cannot resume exactly. Restore the old data settings, or "
                      "start the data pipeline from the beginning.")
    self._it.set_state(decode_state(state["grain"]))
    self._stats = stats_lib.PipelineStats.from_state(state["stats"])

  def stats(self) -> dict[str, Any]:
    """Counters so far: packing_efficiency, documents, tokens, loss_tokens, documents_per_source,
    truncated/dropped/empty documents, bad_records_skipped and bad_records {reason: {file: n}}."""
    return {**self._stats.summary(self._index_stats), **self.info}

  def report(self, name: str | None = None) -> str:
    return stats_lib.report(self.stats(), name or f"data[{self.info['split']}]")

  def close(self) -> None:
    """Stops prefetch threads and worker processes; the iterator cannot be used afterwards."""
    it, self._it = self._it, None
    if it is not None and hasattr(it, "close"):
      it.close()
    del it  # freed now, while the interpreter is intact (Grain's finalisers close again)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
