"""RL rollout data: prompts read from the `data.sources` (format `prompt`), and the training
rows built from sampled completions.

Prompts: every source's records (JSONL / Parquet / Arrow) in one list, visited in a fresh
seeded permutation each epoch; the position (epoch, index) is the iterator state saved in
checkpoints, so a resumed run sees the same prompts. A record's `prompt_field` holds a string
(tokenized with bos when data.add_bos) or chat messages (rendered with the chat template and
the generation prompt); its other fields are the columns passed to reward functions.

Training rows (`training_batch`): prompt left-padded to `max_prompt_tokens`, then the
completion, right-padded to `max_new_tokens`; positions count from each prompt's first token,
exactly as the sampler computed them, and padding has segment id 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxtrain.data.errors import BadRecord, DataError
from jaxtrain.data.formats import parse_record
from jaxtrain.data.kinds import open_source
from jaxtrain.data.pipeline import data_seed


@dataclasses.dataclass
class Prompt:
  ids: list[int]
  prompt: Any  # as the record gave it (string or messages)
  columns: dict  # the record's other fields
  where: str  # file and line / row


class PromptData:
  """Prompts of `config.data.sources`; `next_batch(k)`, `get_state()`, `set_state()`."""

  def __init__(self, config, tokenizer):
    d = config.data
    self.tokenizer = tokenizer
    self.max_tokens = config.grpo.max_prompt_tokens
    self.add_bos = d.add_bos and tokenizer.bos_id is not None
    self.sources, self.fields = [], []
    for name in sorted(d.sources):
      entry = d.sources[name]
      source = open_source(name, entry, "train", eval_fraction=d.eval_fraction, seq_len=d.seq_len,
                           overlong="error", tokenizer=tokenizer)
      self.sources.append(source)
      self.fields.append(entry.prompt_field)
    self.index = [(s, i) for s, source in enumerate(self.sources) for i in range(len(source))]
    if not self.index:
      raise DataError(f"config data.sources: no prompts in {', '.join(sorted(d.sources))}")
    self.seed = data_seed(config)
    self.epochs = d.epochs
    self.epoch, self.position = 0, 0
    self._order = self._permutation(0)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.index))

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "position": self.position}

  def set_state(self, state: dict) -> None:
    self.epoch, self.position = int(state["epoch"]), int(state["position"])
    self._order = self._permutation(self.epoch)

  def __len__(self) -> int:
    return len(self.index)

  def next_batch(self, k: int) -> list[Prompt] | None:
    """The next `k` prompts (crossing into the next epoch as needed); None when data.epochs
    passes are done."""
    out = []
    while len(out) < k:
      if self.position == len(self.index):
        if self.epochs and self.epoch + 1 >= self.epochs:
          return None
        self.epoch, self.position = self.epoch + 1, 0
        self._order = self._permutation(self.epoch)
      s, i = self.index[self._order[self.position]]
      self.position += 1
      out.append(self.read(s, i))
    return out

  def read(self, s: int, i: int) -> Prompt:
    payload, _, where = self.sources[s][i]
    field = self.fields[s]
    try:
      record = parse_record(payload)
    except BadRecord as e:
      raise DataError(f"{where}: bad record ({e})") from None
    if field not in record:
      raise DataError(f"{where}: no field {field!r} (fields: {', '.join(map(str, record)) or 'none'})")
    prompt = record[field]
    tok = self.tokenizer
    if isinstance(prompt, str):
      ids = ([tok.bos_id] if self.add_bos else []) + tok.encode(prompt)
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
      ids = tok.encode(tok.apply_chat_template(prompt, add_generation_prompt=True))
    else:
      raise DataError(f"{where}: field {field!r} must be a string or a list of chat messages, "
                      f"got {type(prompt).__name__}")
    if not ids:
      raise DataError(f"{where}: empty prompt")
    if len(ids) > self.max_tokens:
      raise DataError(f"{where}: prompt has {len(ids)} tokens, more than grpo.max_prompt_tokens={self.max_tokens}")
    return Prompt(ids, prompt, {k: v for k, v in record.items() if k != field}, where)


def training_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], prompt_len: int,
                   completion_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """Rows `[N, prompt_len + completion_len - 1]` of the train-step contract (input_ids,
  target_ids, segment_ids, positions) plus `mask`: the targets that are completion tokens."""
  N, L = len(prompt_ids), prompt_len + completion_len
  row = np.full((N, L), pad_id, np.int32)
  valid = np.zeros((N, L), np.int32)
  mask = np.zeros((N, L - 1), np.int32)
  for r, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
    start = prompt_len - len(p)
    row[r, start:prompt_len] = p
    row[r, prompt_len:prompt_len + len(c)] = c
    valid[r, start:prompt_len + len(c)] = 1
    mask[r, prompt_len - 1:prompt_len - 1 + len(c)] = 1
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  return {"input_ids": row[:, :-1], "target_ids": row[:, 1:], "segment_ids": valid[:, :-1],
          "positions": positions[:, :-1], "mask": mask}
