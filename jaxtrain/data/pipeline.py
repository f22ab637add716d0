"""`build_pipeline`: sources -> format/tokenize -> split/pack -> batch -> prefetch, on Grain.

Per source: `MapDataset.source` (the split's documents) -> global shuffle (train; reshuffled each
epoch) -> repeat (data.epochs, 0 = forever) -> format+tokenize map. Sources are mixed by weight
(train) or concatenated (eval), sliced per process (`[process_index::process_count]`), grouped
(READ_GROUP documents per Grain element, to amortise Grain's per-element cost), read by
`data.threads` threads, flattened into pieces, optionally window-shuffled (train), packed by
Grain's first-/best-fit packer (packed rows shuffled within each packing group for train),
batched, optionally spread over `data.workers` processes (`mp_prefetch`) and prefetched by a
background thread (`data.prefetch`).

With several sources and data.epochs > 0, a run ends when the first source (relative to its
weight) is used up (Grain's mixing semantics).

The returned `DataIterator` yields contract batches, exposes `stats()` / `report()`, and has an
exact, JSON-serialisable `get_state()` / `set_state()`.
"""

from __future__ import annotations

import zlib
from typing import Any

from jaxtrain.config import ConfigError
from jaxtrain.data.config import VISION_FORMATS
from jaxtrain.data.errors import DataError
from jaxtrain.data.formats import DocumentTransform
from jaxtrain.data.iterator import DataIterator, encode_state
from jaxtrain.data.kinds import open_source
from jaxtrain.data.packing import BatchAssembler, pack, resolve_overlong
from jaxtrain.data.vision.batch import VisionBatchAssembler
from jaxtrain.data.tokenizer import build_tokenizer
from jaxtrain.data.vision.pieces import build_vision

READ_GROUP = 16  # documents per Grain element before flattening into pieces


def data_seed(config) -> int:
  seed = config.data.seed if config.data.seed >= 0 else config.seed
  return int(seed) % (2**32)


def source_seed(seed: int, name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def per_process_batch(config, process_count: int) -> int:
  batch = config.train.global_batch
  if batch % process_count:
    raise ConfigError(f"config train.global_batch: {batch} is not divisible by the {process_count} processes")
  return batch // process_count


def check_vocab(config, tokenizer) -> None:
  model = config.get("model")
  if model is not None and tokenizer.vocab_size > model.vocab_size:
    raise ConfigError(f"config model.vocab_size: {model.vocab_size} is smaller than tokenizer "
                      f"{tokenizer.name_or_path!r}'s vocabulary ({tokenizer.vocab_size})")


def build_documents(config, split: str, tokenizer, vision=None) -> list[tuple[str, Any, Any, DocumentTransform]]:
  """[(name, entry, source, transform)] for the sources with documents in `split`."""
  d = config.data
  vision = vision if vision is not None else build_vision(config, tokenizer)
  out = []
  for name in sorted(d.sources):
    entry = d.sources[name]
    overlong = resolve_overlong(d.overlong, entry.format)
    source = open_source(name, entry, split, eval_fraction=d.eval_fraction, seq_len=d.seq_len,
                         overlong=overlong, tokenizer=tokenizer)
    transform = DocumentTransform(name, entry.kind, entry.to_dict() if hasattr(entry, "to_dict") else dict(entry),
                                  tokenizer, seq_len=d.seq_len, overlong=overlong,
                                  on_bad_record=d.on_bad_record, loss_on=d.loss_on, add_bos=d.add_bos,
                                  add_eos=d.add_eos, vision=vision)
    out.append((name, entry, source, transform))
  return out


class _Tag:
  """Source item -> (source name, item), so mixed groups find their format."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, item):
    return self.name, item


class GroupTransform:
  """A group of tagged records -> all their pieces. Grain's per-element overhead is paid once
  per READ_GROUP documents instead of once per document."""

  def __init__(self, transforms: dict[str, DocumentTransform]):
    self.transforms = transforms

  def __call__(self, group) -> list[dict]:
    out = []
    for name, item in group:
      out += self.transforms[name](item)
    return out


def grouped(ds, transforms: dict[str, DocumentTransform]):
  return ds.batch(READ_GROUP, batch_fn=list).map(GroupTransform(transforms))


class _Flatten:
  """Grain FlatMap: a group's list of pieces -> the pieces."""

  def flat_map(self, pieces):
    return pieces


def build_pipeline(config, split: str = "train", tokenizer=None, process_index: int = 0,
                   process_count: int = 1) -> "DataIterator":
  """The batches of `split` ("train" or "eval") for one process.

  train: shuffled, mixed by weight, repeated per data.epochs (0 = forever).
  eval: the held-out documents in a fixed order, one pass (finite), the last batch padded.
  """
  import grain
  from grain import experimental as gx

  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  d = config.data
  tokenizer = tokenizer or build_tokenizer(d)
  check_vocab(config, tokenizer)
  batch = per_process_batch(config, process_count)
  seed = data_seed(config)
  train = split == "train"

  vision = build_vision(config, tokenizer)
  parts = build_documents(config, split, tokenizer, vision)
  transforms = {name: transform for name, _, _, transform in parts}
  datasets, weights, index_stats, sizes = [], [], {}, {}
  for name, entry, source, transform in parts:
    sizes[name] = len(source)
    for k, v in source.index_stats.items():
      index_stats[k] = index_stats.get(k, 0) + v
    if len(source) == 0:
      if train and entry.holdout != "all":
        raise DataError(f"config data.sources.{name}: no training documents (holdout={entry.holdout!r}, "
                        f"data.eval_fraction={d.eval_fraction})")
      continue  # an eval-only source in the train split, or a source without held-out documents
    ds = grain.MapDataset.source(source)
    if train:
      ds = ds.shuffle(seed=source_seed(seed, name)).repeat(d.epochs or None)
    datasets.append(ds.map(_Tag(name)))
    weights.append(float(entry.weight))
  if not datasets:
    if train:
      raise DataError("config data.sources: no source has training documents (all are holdout='all')")
    raise DataError("no held-out documents for the eval split: raise data.eval_fraction, or add a source with "
                    "holdout='all'")
  if len(datasets) == 1:
    ds = datasets[0]
  elif train:
    ds = grain.MapDataset.mix(datasets, weights)
  else:
    ds = grain.MapDataset.concatenate(datasets)
  if process_count > 1:
    ds = ds.slice(slice(process_index, None, process_count))

  threads = d.threads
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(4, 2 * threads))
  it = grouped(ds, transforms).to_iter_dataset(read)
  it = gx.FlatMapIterDataset(it, _Flatten())
  if train and d.shuffle_window > 1:
    it = gx.WindowShuffleIterDataset(it, window_size=d.shuffle_window, seed=source_seed(seed, "window"))
  bins = d.packing_bins or max(2 * batch, 16)
  it = pack(it, seq_len=d.seq_len, method=d.packing, bins=bins, seed=source_seed(seed, "pack"), shuffle_bins=train,
            extra_lengths=vision.lengths() if vision else None)
  if vision is None:
    assembler = BatchAssembler(batch, d.seq_len, tokenizer.pad_id)
  else:
    assembler = VisionBatchAssembler(batch, d.seq_len, tokenizer.pad_id, max_patches=vision.max_patches,
                                     max_items=vision.max_items, patch_shape=vision.patch_shape, rope=vision.rope)
  it = it.batch(batch, drop_remainder=False, batch_fn=assembler)
  if d.workers > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.workers, per_worker_buffer_size=2))
  if d.prefetch > 0:
    it = gx.ThreadPrefetchIterDataset(it, prefetch_buffer_size=d.prefetch)
  info = {"split": split, "batch_size": batch, "seq_len": d.seq_len, "documents_in_split": sizes,
          "tokenizer": tokenizer.name_or_path, "process_index": process_index, "process_count": process_count}
  return DataIterator(iter(it), fingerprint(config, split, batch, process_index, process_count), index_stats, info)


def _absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags; programs that do not use absl never parse them.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def fingerprint(config, split: str, batch: int, process_index: int, process_count: int) -> dict:
  """What decides the order of batches: a saved state only resumes the same pipeline."""
  d = config.data
  keys = ("seq_len", "tokenizer", "chat_template", "epochs", "eval_fraction", "packing", "packing_bins",
          "overlong", "loss_on", "add_bos", "add_eos", "shuffle_window", "workers")
  fp = {k: d[k] for k in keys}
  if any(s.format in VISION_FORMATS for s in d.sources.values()):
    fp["vision"] = d.vision.to_dict()
  fp["sources"] = {name: d.sources[name].to_dict() for name in sorted(d.sources)}
  fp.update(split=split, seed=data_seed(config), batch=batch, process_index=process_index,
            process_count=process_count)
  return encode_state(fp)
