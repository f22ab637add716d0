"""A unigram baseline: the loss a model that ignores context would reach.

`unigram_loss` fits token frequencies (add-one smoothing) on the training split's loss-masked
target tokens, exactly as the pipeline forms them, and returns the cross-entropy in nats/token on
the loss-masked targets of the eval batches the model is evaluated on. A trained model's held-out
loss should be well below it.
"""

from __future__ import annotations

import numpy as np


def unigram_counts(config, tokenizer, max_documents: int | None = None) -> dict[str, np.ndarray]:
  """{source: counts [vocab]} of loss-masked target tokens over the training split (an evenly
  strided subset of at most `max_documents` documents per source, if given)."""
  import grain

  from jaxtrain.data.pipeline import _Tag, build_documents, grouped

  counts = {}
  for name, _, source, transform in build_documents(config, "train", tokenizer):
    total = np.zeros(tokenizer.vocab_size, np.int64)
    step = 1 if not max_documents else max(1, -(-len(source) // max_documents))
    ds = grouped(grain.MapDataset.source(source)[::step].map(_Tag(name)), {name: transform})
    threads = config.data.threads
    pending, pending_size = [], 0
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, 2 * threads))))
    for pieces in it:
      for piece in pieces:
        rows = piece["tokens"]
        pending.append(rows[rows[:, 2] > 0, 1])
        pending_size += len(rows)
      if pending_size > 1 << 22:
        total += np.bincount(np.concatenate(pending), minlength=tokenizer.vocab_size)
        pending, pending_size = [], 0
    it.close()
    if pending:
      total += np.bincount(np.concatenate(pending), minlength=tokenizer.vocab_size)
    counts[name] = total
  return counts


def unigram_log_probs(config, tokenizer, max_documents: int | None = 20_000) -> np.ndarray:
  """log p(token) of the add-one-smoothed unigram model, sources (those with training
  documents) mixed by their weights."""
  counts = {k: c for k, c in unigram_counts(config, tokenizer, max_documents).items() if c.sum() > 0}
  if not counts:
    raise ValueError("the training split has no loss tokens to fit a unigram model on")
  weights = {name: float(config.data.sources[name].weight) for name in counts}
  total = sum(weights.values())
  p = np.zeros(tokenizer.vocab_size, np.float64)
  for name, c in counts.items():
    p += weights[name] / total * (c + 1.0) / (c.sum() + tokenizer.vocab_size)
  return np.log(p)


def unigram_loss(config, tokenizer, batches: int | None = None, max_documents: int | None = 20_000) -> float:
  """Cross-entropy (nats/token) of the unigram model on the eval split's loss-masked targets.

  `batches`: how many eval batches to score — by default `config.eval.batches` when set (> 0),
  i.e. the same batches the trainer evaluates on; 0 = the whole held-out split.
  `max_documents`: training documents per source used for fitting (an evenly strided subset;
  None = all).
  """
  from jaxtrain.data.pipeline import build_pipeline

  if batches is None:
    evaluation = config.get("eval")
    batches = int(evaluation.batches) if evaluation is not None and evaluation.get("batches", 0) > 0 else 0
  log_p = unigram_log_probs(config, tokenizer, max_documents)
  nll, n = 0.0, 0
  with build_pipeline(config, split="eval", tokenizer=tokenizer) as it:
    for i, batch in enumerate(it):
      if batches and i >= batches:
        break
      mask = batch["loss_mask"] > 0
      nll -= float(log_p[batch["target_ids"][mask]].sum())
      n += int(mask.sum())
  if n == 0:
    raise ValueError("the eval split has no loss tokens")
  return nll / n
