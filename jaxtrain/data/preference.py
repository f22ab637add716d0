"""Preference pairs: `{prompt, chosen, rejected}` records -> batches of `[pairs, 2, seq_len]`.

Records follow TRL's formats: standard (strings: prompt + completion text) or conversational
(lists of chat messages: the prompt is rendered with the chat template and a generation prompt,
each completion is the assistant turn(s) that follow; without a `prompt` field the shared
leading messages of `chosen` and `rejected` are the prompt). Every pair becomes two rows, chosen
then rejected, each `prompt + completion` (unpacked, the prompt repeated), with the loss mask on
the completion tokens. Batch keys are the contract's (`input_ids`, `target_ids`, `loss_mask`,
`segment_ids`, `positions`), each `[pairs, 2, seq_len]`, plus `ref_logps` `[pairs, 2]` float32
when reference log-probabilities are read from the records.

A record without `chosen` / `rejected` is a bad record (named by file and line, or skipped with
data.on_bad_record=skip), and so is a pair whose prompt leaves no room for a completion in
data.seq_len; completions that do not fit are truncated and counted.

Sources, shuffling, mixing, per-process slicing and the exact iterator state are the same as
for SFT data (pipeline.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxtrain.data import chat
from jaxtrain.data.errors import BadRecord, DataError, bad_record_error
from jaxtrain.data.formats import check_messages, parse_record, string_field
from jaxtrain.data.iterator import DataIterator
from jaxtrain.data.kinds import open_source
from jaxtrain.data.pipeline import _absl_flags_parsed, data_seed, fingerprint, per_process_batch, source_seed
from jaxtrain.data.tokenizer import build_tokenizer

KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


class PairTransform:
  """Tagged source item -> {"rows": int32 [2, 5, T] or None, "ref": float32 [2], "meta": dict}."""

  def __init__(self, name: str, entry: dict, tokenizer, *, seq_len: int, on_bad_record: str, add_bos: bool,
               add_eos: bool, with_reference: bool):
    self.name, self.entry, self.tok = name, dict(entry), tokenizer
    self.seq_len, self.on_bad_record, self.with_reference = seq_len, on_bad_record, with_reference
    self.bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    self.eos = [tokenizer.eos_id] if add_eos and tokenizer.eos_id is not None else []

  def __call__(self, item) -> dict:
    payload, file, where = item
    meta = {"src": self.name, "doc": 1}
    try:
      pair, ref, cut = self.encode(parse_record(payload))
    except BadRecord as bad:
      if self.on_bad_record == "error":
        raise bad_record_error(where, bad) from None
      return {"rows": None, "ref": None, "meta": {"src": self.name, "doc": 0, "bad": [bad.reason, file, where,
                                                                                       bad.detail]}}
    if cut:
      meta.update(trunc=cut)
    return {"rows": pair, "ref": ref, "meta": meta}

  # -- one record ------------------------------------------------------------------------------
  def encode(self, record: dict):
    e = self.entry
    chosen, rejected = record.get(e["chosen_field"]), record.get(e["rejected_field"])
    for name, value in ((e["chosen_field"], chosen), (e["rejected_field"], rejected)):
      if value is None:
        raise BadRecord("missing_field", f"no field {name!r} (fields: {', '.join(map(str, record)) or 'none'})")
    prompt = record.get(e["prompt_field"])
    if isinstance(chosen, str) or isinstance(rejected, str):
      prompt_ids, completions = self._standard(record, chosen, rejected)
    else:
      prompt_ids, completions = self._conversational(prompt, chosen, rejected)
    room = self.seq_len - len(prompt_ids)
    if room < 1:
      raise BadRecord("prompt_too_long", f"the prompt has {len(prompt_ids)} tokens and data.seq_len="
                      f"{self.seq_len} leaves no room for the completions (raise data.seq_len or shorten it)")
    rows, cut = [], 0
    for ids in completions:
      if len(ids) == 0:
        raise BadRecord("empty_completion", "a chosen or rejected completion has no tokens")
      cut += max(len(ids) - room, 0)
      rows.append(self._row(prompt_ids, ids[:room]))
    ref = None
    if self.with_reference:
      ref = np.asarray([self._float(record, e["ref_chosen_field"]), self._float(record, e["ref_rejected_field"])],
                       np.float32)
    return np.stack(rows), ref, cut

  @staticmethod
  def _float(record: dict, name: str) -> float:
    value = record.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise BadRecord("missing_reference", f"no numeric field {name!r} (preference.reference=precomputed)")
    return float(value)

  def _standard(self, record, chosen, rejected):
    e, tok = self.entry, self.tok
    prompt = string_field(record, e["prompt_field"])
    chosen, rejected = string_field(record, e["chosen_field"]), string_field(record, e["rejected_field"])
    prompt_ids = np.concatenate([np.asarray(self.bos, np.int32), tok.encode_array(prompt)])
    eos = np.asarray(self.eos, np.int32)
    return prompt_ids, [np.concatenate([tok.encode_array(c), eos]) for c in (chosen, rejected)]

  def _conversational(self, prompt, chosen, rejected):
    e, tok = self.entry, self.tok
    if not tok.chat_template:
      raise DataError(f"config data.chat_template: source {self.name!r} has conversational preference records but "
                      f"tokenizer {tok.name_or_path!r} has no chat template")
    chosen = check_messages(chosen, e["chosen_field"], "assistant")
    rejected = check_messages(rejected, e["rejected_field"], "assistant")
    if prompt is None:  # implicit prompt: the shared leading turns
      n = 0
      while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
      prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
      if not prompt:
        raise BadRecord("missing_field", f"no field {e['prompt_field']!r} and no shared leading messages")
    else:
      prompt = check_messages(prompt, e["prompt_field"], "all")
    try:
      head = chat.render(tok.chat_template, prompt, add_generation_prompt=True, special_tokens=tok.special_tokens)
      completions = []
      for turns in (chosen, rejected):
        full = chat.render(tok.chat_template, prompt + turns, special_tokens=tok.special_tokens)
        if not full.startswith(head):
          raise BadRecord("template_error", "the chat template does not render the prompt as a prefix of the "
                          "conversation")
        completions.append(tok.encode_array(full[len(head):]))
    except chat.TemplateError as err:
      raise BadRecord("template_error", str(err)) from None
    return tok.encode_array(head), completions

  def _row(self, prompt_ids, completion_ids) -> np.ndarray:
    """[5, T]: input, target, loss mask, segment, position (padded)."""
    T, pad = self.seq_len, self.tok.pad_id
    ids = np.concatenate([prompt_ids, completion_ids]).astype(np.int32)
    n, p = len(ids), len(prompt_ids)
    row = np.zeros((5, T), np.int32)
    row[0] = pad
    row[1] = pad
    row[0, :n] = ids
    row[1, :n - 1] = ids[1:]
    row[2, max(p - 1, 0):n - 1] = 1  # positions whose next token is a completion token
    row[3, :n] = 1
    row[4, :n] = np.arange(n)
    return row


class PairBatcher:
  """Grain batch_fn: pairs -> the batch (short or skipped-filled batches padded with empty pairs)."""

  def __init__(self, batch_size: int, seq_len: int, pad_id: int, with_reference: bool):
    self.b, self.T, self.pad, self.with_reference = batch_size, seq_len, pad_id, with_reference

  def __call__(self, items) -> dict[str, Any]:
    arr = np.zeros((self.b, 2, 5, self.T), np.int32)
    arr[:, :, 0:2] = self.pad
    ref = np.zeros((self.b, 2), np.float32)
    stats: dict[str, Any] = {"batches": 1, "slots": self.b * 2 * self.T}
    i = 0
    for item in items:
      meta = item["meta"]
      if meta.get("bad"):
        stats.setdefault("bad", []).append(meta["bad"])
        continue
      arr[i] = item["rows"]
      if item["ref"] is not None:
        ref[i] = item["ref"]
      i += 1
      stats["documents"] = stats.get("documents", 0) + 1
      per = stats.setdefault("documents_per_source", {})
      per[meta["src"]] = per.get(meta["src"], 0) + 1
      if meta.get("trunc"):
        stats["truncated_documents"] = stats.get("truncated_documents", 0) + 1
        stats["truncated_tokens"] = stats.get("truncated_tokens", 0) + meta["trunc"]
    batch = {k: arr[:, :, j] for j, k in enumerate(KEYS)}
    if self.with_reference:
      batch["ref_logps"] = ref
    stats["rows"] = 2 * i
    stats["tokens"] = int((batch["segment_ids"] > 0).sum())
    stats["loss_tokens"] = int(batch["loss_mask"].sum())
    stats["segments"] = 2 * i
    batch["_stats"] = stats
    return batch


class _Tag:
  def __init__(self, name: str):
    self.name = name

  def __call__(self, item):
    return self.name, item


class _Encode:
  def __init__(self, transforms: dict[str, PairTransform]):
    self.transforms = transforms

  def __call__(self, tagged):
    name, item = tagged
    return self.transforms[name](item)


def build_preference_pipeline(config, split: str = "train", tokenizer=None, process_index: int = 0,
                              process_count: int = 1, *, with_reference: bool = False) -> DataIterator:
  """The preference batches of `split` for one process (train: shuffled, mixed, repeated per
  data.epochs; eval: the held-out pairs once, the last batch padded with empty pairs)."""
  import grain
  from grain import experimental as gx

  d = config.data
  tokenizer = tokenizer or build_tokenizer(d)
  batch = per_process_batch(config, process_count)
  seed = data_seed(config)
  train = split == "train"
  transforms, datasets, weights, sizes = {}, [], [], {}
  for name in sorted(d.sources):
    entry = d.sources[name]
    if entry.format != "preference":
      raise DataError(f"config data.sources.{name}.format: train.method=dpo reads preference pairs; set format="
                      f"'preference' ({entry.format!r} records have no chosen/rejected completions)")
    source = open_source(name, entry, split, eval_fraction=d.eval_fraction, seq_len=d.seq_len, overlong="truncate",
                         tokenizer=tokenizer)
    sizes[name] = len(source)
    transforms[name] = PairTransform(name, entry.to_dict(), tokenizer, seq_len=d.seq_len,
                                     on_bad_record=d.on_bad_record, add_bos=d.add_bos, add_eos=d.add_eos,
                                     with_reference=with_reference)
    if len(source) == 0:
      if train and entry.holdout != "all":
        raise DataError(f"config data.sources.{name}: no training pairs (holdout={entry.holdout!r}, "
                        f"data.eval_fraction={d.eval_fraction})")
      continue
    ds = grain.MapDataset.source(source)
    if train:
      ds = ds.shuffle(seed=source_seed(seed, name)).repeat(d.epochs or None)
    datasets.append(ds.map(_Tag(name)))
    weights.append(float(entry.weight))
  if not datasets:
    raise DataError("config data.sources: no preference pairs for the " + split + " split")
  ds = datasets[0] if len(datasets) == 1 else (grain.MapDataset.mix(datasets, weights) if train
                                               else grain.MapDataset.concatenate(datasets))
  if process_count > 1:
    ds = ds.slice(slice(process_index, None, process_count))
  it = ds.map(_Encode(transforms)).to_iter_dataset(grain.ReadOptions(num_threads=d.threads,
                                                                     prefetch_buffer_size=max(4, 2 * d.threads)))
  it = it.batch(batch, drop_remainder=False, batch_fn=PairBatcher(batch, d.seq_len, tokenizer.pad_id, with_reference))
  if d.workers > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.workers, per_worker_buffer_size=2))
  if d.prefetch > 0:
    it = gx.ThreadPrefetchIterDataset(it, prefetch_buffer_size=d.prefetch)
  info = {"split": split, "batch_size": batch, "seq_len": d.seq_len, "documents_in_split": sizes,
          "tokenizer": tokenizer.name_or_path, "process_index": process_index, "process_count": process_count}
  fp = fingerprint(config, split, batch, process_index, process_count)
  fp["preference_reference"] = with_reference
  keys = KEYS + (("ref_logps",) if with_reference else ())
  return DataIterator(iter(it), fp, {}, info, keys=keys)
