"""Data pipelines: sources -> format/tokenize -> pack -> batch -> per-process shard (Grain).

Output contract of every pipeline (see docs/architecture.md): dicts of int32 numpy arrays
`[batch, seq_len]` named input_ids, target_ids, loss_mask, segment_ids (0 = padding),
positions.

    tok = build_tokenizer(config.data)
    it = build_pipeline(config, split="train", tokenizer=tok, process_index=0, process_count=1)
    batch = next(it); state = it.get_state(); it.set_state(state); it.stats(); it.report()
    unigram_loss(config, tok)

Modules: config (the `data` section), tokenizer, chat (templates), files (paths, held-out
split), sources, tokens (pre-tokenized), kinds (config entry -> source), formats, packing,
stats, pipeline, iterator, baseline; vision/ (images and videos for vision-language models, the
multimodal batch keys). Imports are lazy so importing the `data` config section
stays cheap (Grain imports JAX).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_tokenizer": "jaxtrain.data.tokenizer",
    "ByteTokenizer": "jaxtrain.data.tokenizer",
    "HFTokenizer": "jaxtrain.data.tokenizer",
    "Tokenizer": "jaxtrain.data.tokenizer",
    "build_pipeline": "jaxtrain.data.pipeline",
    "DataIterator": "jaxtrain.data.iterator",
    "unigram_loss": "jaxtrain.data.baseline",
    "DataError": "jaxtrain.data.errors",
    "write_tokens": "jaxtrain.data.tokens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxtrain.data' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
