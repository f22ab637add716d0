"""The `data` config section (owned by the data pipeline).

`data.sources` is an open map: each entry is a user-named source validated against
`source_defaults()`. A config file that gives `sources` replaces the default quickstart source;
`--config.data.sources.NAME.KEY=V` overrides edit or add single entries.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxtrain.config import require

# Where documents come from.
KINDS = ("python_stdlib", "text", "jsonl", "parquet", "arrow", "tokens")
# How a record becomes tokens and a loss mask.
FORMATS = ("text", "chat", "prompt_completion", "alpaca", "preference", "vision_chat", "llava", "prompt")
VISION_FORMATS = ("vision_chat", "llava")  # need data.vision (a processor directory)
IMAGE_BACKENDS = ("torchvision", "pil")
HOLDOUTS = ("hash", "none", "all")
TEXT_UNITS = ("file", "line")
PACKINGS = ("first_fit", "best_fit", "none")
OVERLONG = ("auto", "split", "truncate", "drop", "error")
ON_BAD_RECORD = ("error", "skip")
LOSS_ON = ("assistant", "last_assistant", "all")
TOKEN_DTYPES = ("uint16", "int32", "uint32", "int64")


def source_defaults() -> ConfigDict:
  return ConfigDict({
      # python_stdlib: the *.py files of this Python's standard library, one document per
      #   definition-level chunk (no network, no files to ship); text: plain text files/dirs;
      #   jsonl: JSON lines (.jsonl, .jsonl.gz);
      #   parquet; arrow: .arrow files or a `datasets.save_to_disk` directory; tokens: a
      #   pre-tokenized 1-D .npy (memory-mapped) or raw .bin token file.
      "kind": "python_stdlib",
      # File, directory or glob; several separated by commas. "" for python_stdlib = this
      # interpreter's stdlib directory.
      "path": "",
      # text | chat | prompt_completion | alpaca | preference (train.method=dpo) | vision_chat
      # (messages whose content lists hold text / image / video items) | llava (<image> / <video>
      # placeholders in the text, files in the images_field / videos_field) | prompt (RL prompts:
      # `prompt_field` holds a string or chat messages; train.method=grpo only); tokens: text only.
      "format": "text",
      "weight": 1.0,  # mixing weight against the other sources (training split)
      # Held-out documents: hash = a deterministic data.eval_fraction of documents (by a hash of
      # file name and record index); none = all train; all = this source is eval-only.
      "holdout": "hash",
      "glob": "",  # file pattern inside directories ("" = per kind: *.py, *.txt, *.jsonl*, ...)
      "text_unit": "file",  # kind=text: one document per file, or per non-empty line
      # Field names (jsonl / parquet / arrow records).
      "text_field": "text",  # text: field of the document text (jsonl / parquet / arrow records)
      "messages_field": "messages",  # chat: field of the messages list
      "tools_field": "tools",  # optional per-record tool schemas passed to the chat template
      "prompt_field": "prompt",  # prompt_completion: field of the prompt
      "completion_field": "completion",  # prompt_completion: field of the completion
      "instruction_field": "instruction",  # alpaca: field of the instruction
      "input_field": "input",  # alpaca: field of the optional input
      "output_field": "output",  # alpaca: field of the answer
      # format=preference: {prompt, chosen, rejected} as strings or chat-message lists (TRL's
      # standard and conversational formats), optional precomputed reference log-probs.
      "chosen_field": "chosen",  # preference: field of the preferred response
      "rejected_field": "rejected",  # preference: field of the dispreferred response
      "ref_chosen_field": "ref_chosen_logps",  # preference: precomputed reference log-prob of chosen
      "ref_rejected_field": "ref_rejected_logps",  # preference: precomputed reference log-prob of rejected
      "images_field": "images",  # llava: an image path or a list of them ("image" is read too)
      "videos_field": "videos",  # llava: a video path or a list of them ("video" is read too)
      "hf_split": "train",  # kind=arrow: split directory of a saved DatasetDict
      "token_dtype": "int32",  # kind=tokens, raw .bin files only (.npy carry their dtype)
  })


# Dotted config paths whose children are user-named entries (validated against a template).
OPEN_MAPS = {"data.sources": source_defaults}


def defaults() -> ConfigDict:
  return ConfigDict({
      "seq_len": 256,  # tokens per packed row
      "tokenizer": "byte",  # "byte" or a local Hugging Face tokenizer directory
      "chat_template": "",  # "" = the tokenizer's; else a .jinja file path or a template string
      "sources": {"main": source_defaults()},
      "seed": -1,  # shuffling seed; -1 = the run's `seed`
      "epochs": 0,  # passes over the training data; 0 = repeat forever
      "eval_fraction": 0.02,  # share of documents held out (sources with holdout=hash)
      "packing": "first_fit",  # first_fit | best_fit | none (one document per row)
      "packing_bins": 0,  # rows packed together; 0 = max(2 * per-process batch, 16)
      # Documents longer than seq_len tokens: split into seq_len pieces | truncate | drop |
      # error; auto = split for text, truncate for chat / prompt_completion / alpaca.
      "overlong": "auto",
      "on_bad_record": "error",  # error (naming file and line) | skip (counted and reported)
      "loss_on": "assistant",  # chat: assistant | last_assistant | all tokens
      "add_bos": True,  # text / prompt_completion / alpaca: prepend bos (if the tokenizer has one)
      "add_eos": True,  # text / prompt_completion / alpaca: append eos (if the tokenizer has one)
      # Pieces shuffled in a window after splitting long documents (0 = off; packed rows are
      # shuffled within each packing group anyway). Costs ~0.1-0.5 ms per piece.
      "shuffle_window": 0,
      "workers": 0,  # worker processes (grain mp_prefetch); 0 = in this process
      # Reader/tokenizer threads per process (0 = in the pipeline's thread; 2-4 help Hugging
      # Face tokenizers, which release the GIL; the byte tokenizer is fastest with 0).
      "threads": 0,
      "prefetch": 2,  # batches prepared ahead by a background thread (0 = none)
      "vision": vision_defaults(),
  })


def vision_defaults() -> ConfigDict:
  return ConfigDict({
      # Local Hugging Face directory with preprocessor_config.json (Qwen3-VL or InternVL); "" =
      # data.tokenizer's directory (whose tokenizer is used either way). Used when a source has
      # format vision_chat or llava.
      "processor": "",
      "image_backend": "torchvision",  # resize images as transformers' torchvision | pil processor
      # Pixel patches per row (Qwen3-VL: patches of temporal x 16 x 16 pixels; InternVL: tiles),
      # the fixed size of pixel_values; a sample with more is a bad record (the cap on pixels per
      # sample). 0 = as many as seq_len vision tokens can hold.
      "max_patches": 0,
      "max_items": 16,  # images / videos (InternVL: tiles) per row, the fixed size of vision_grid_thw
      "image_max_pixels": 0,  # Qwen3-VL: resize images to at most this many pixels (0 = the processor's)
      "video_max_pixels": 0,  # Qwen3-VL: pixel budget of a video, all frames (0 = the processor's)
      "max_tiles": 0,  # InternVL: tiles per image before the thumbnail (0 = the processor's)
      "video_fps": 0.0,  # frames sampled per second (0 = the processor's)
      "video_num_frames": 0,  # frames sampled per video, instead of video_fps (0 = the processor's)
  })


def validate(config: ConfigDict) -> None:
  d = config.data
  require(d.seq_len >= 2, "data.seq_len", f"must be >= 2, got {d.seq_len}")
  require(isinstance(d.tokenizer, str) and d.tokenizer != "", "data.tokenizer",
          "must be 'byte' or a local Hugging Face tokenizer directory")
  if d.tokenizer == "byte":
    from jaxtrain.data.tokenizer import ByteTokenizer
    vocab = ByteTokenizer.VOCAB_SIZE
    require(vocab <= config.model.vocab_size, "model.vocab_size",
            f"{config.model.vocab_size} is smaller than the byte tokenizer's vocabulary ({vocab})")
  choices = {"packing": PACKINGS, "overlong": OVERLONG, "on_bad_record": ON_BAD_RECORD,
             "loss_on": LOSS_ON}
  for key, allowed in choices.items():
    require(d[key] in allowed, f"data.{key}", f"{d[key]!r} is not one of {allowed}")
  require(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", f"must be in [0, 1), got {d.eval_fraction}")
  for key in ("epochs", "packing_bins", "shuffle_window", "workers", "threads", "prefetch"):
    require(d[key] >= 0, f"data.{key}", f"must be >= 0, got {d[key]}")
  require(len(d.sources) > 0, "data.sources", "needs at least one source")
  v = d.vision
  require(v.image_backend in IMAGE_BACKENDS, "data.vision.image_backend",
          f"{v.image_backend!r} is not one of {IMAGE_BACKENDS}")
  for key in ("max_patches", "image_max_pixels", "video_max_pixels", "max_tiles", "video_num_frames"):
    require(v[key] >= 0, f"data.vision.{key}", f"must be >= 0, got {v[key]}")
  require(v.max_items >= 1, "data.vision.max_items", f"must be >= 1, got {v.max_items}")
  require(v.video_fps >= 0, "data.vision.video_fps", f"must be >= 0, got {v.video_fps}")
  if any(s.format in VISION_FORMATS for s in d.sources.values()):
    require(d.tokenizer != "byte", "data.tokenizer",
            "vision_chat / llava sources need the vision-language model's Hugging Face tokenizer directory")
  for name, s in d.sources.items():
    key = f"data.sources.{name}"
    require(s.kind in KINDS, f"{key}.kind", f"{s.kind!r} is not one of {KINDS}")
    require(s.format in FORMATS, f"{key}.format", f"{s.format!r} is not one of {FORMATS}")
    require(s.holdout in HOLDOUTS, f"{key}.holdout", f"{s.holdout!r} is not one of {HOLDOUTS}")
    require(s.text_unit in TEXT_UNITS, f"{key}.text_unit", f"{s.text_unit!r} is not one of {TEXT_UNITS}")
    require(s.token_dtype in TOKEN_DTYPES, f"{key}.token_dtype",
            f"{s.token_dtype!r} is not one of {TOKEN_DTYPES}")
    require(s.weight > 0, f"{key}.weight", f"must be > 0, got {s.weight}")
    if s.format in VISION_FORMATS:
      require(s.kind in ("jsonl", "parquet", "arrow"), f"{key}.format",
              f"format={s.format!r} needs records (kind jsonl, parquet or arrow), not kind={s.kind!r}")
    if s.kind in ("python_stdlib", "text", "tokens"):
      require(s.format == "text", f"{key}.format",
              f"kind={s.kind!r} holds plain documents: format must be 'text', got {s.format!r}")
    if s.kind != "python_stdlib":
      require(bool(s.path), f"{key}.path", f"kind={s.kind!r} needs a path (file, directory or glob)")
