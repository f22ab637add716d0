"""Multimodal data through the Grain pipeline: vision_chat and llava JSONL with images and
videos -> batches that follow the multimodal contract (data/vision/batch.py), each document's
ids, pixels and rotary positions equal to the processor's, bad media named or skipped and
counted, the pixel cap, exact resume."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxtrain.data import build_pipeline
from jaxtrain.data.errors import DataError
from jaxtrain.data.vision.processor import VisionProcessor
from tests.data.conftest import check_contract
from tests.data.vision.conftest import write_image, write_video

TEXT_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "positions")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("vlm_data")
  (d / "media").mkdir()
  write_image(d / "media" / "a.png", 60, 100, seed=1)
  write_image(d / "media" / "b.jpg", 90, 50, seed=2)
  write_video(d / "media" / "v.mp4", 12, 64, 64, fps=6, seed=3)
  chat = [
      {"messages": [{"role": "user", "content": [{"type": "image", "image": "media/a.png"},
                                                 {"type": "text", "text": "What colour is the square?"}]},
                    {"role": "assistant", "content": "The square is red."}]},
      {"messages": [{"role": "user", "content": [{"type": "video", "video": "media/v.mp4"},
                                                 {"type": "text", "text": "Which way does the ball move?"}]},
                    {"role": "assistant", "content": "Left to right."}]},
      {"messages": [{"role": "user", "content": "How many circles are there?"},
                    {"role": "assistant", "content": "There are 3 circles."}]},
  ]
  llava = [
      {"images": ["media/b.jpg", "media/a.png"], "conversations": [
          {"from": "human", "value": "<image>\n<image>\nWhere is the star?"}, {"from": "gpt", "value": "Top left."}]},
      {"image": "media/b.jpg", "video": "media/v.mp4", "conversations": [
          {"from": "human", "value": "Describe the picture and the video."}, {"from": "gpt", "value": "A star."}]},
  ]
  (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
  (d / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in llava))
  return d


def _config(make_config, model_dir, dataset, split_all=True, **data):
  holdout = "all" if split_all else "none"
  sources = {"chat": {"kind": "jsonl", "path": str(dataset / "chat.jsonl"), "format": "vision_chat",
                      "holdout": holdout},
             "llava": {"kind": "jsonl", "path": str(dataset / "llava.jsonl"), "format": "llava", "holdout": holdout}}
  data.setdefault("seq_len", 256)
  return make_config(sources=sources, batch=data.pop("batch", 2), model_vocab=512, tokenizer=model_dir, **data)


def _records(dataset):
  out = []
  for name in ("chat", "llava"):
    out += [(name, json.loads(line)) for line in (dataset / f"{name}.jsonl").read_text().splitlines()]
  return out


def test_each_document_equals_the_processor(make_config, qwen_vl_dir, dataset):
  """One document per row, in file order (eval split): ids, loss mask, pixels, grids and rotary
  positions are the processor's own for that record."""
  from jaxtrain.data.vision.records import record_messages

  config = _config(make_config, qwen_vl_dir, dataset, packing="none", batch=5)
  proc = VisionProcessor(qwen_vl_dir)
  with build_pipeline(config, split="eval") as it:
    batch = next(it)
  check_contract({k: batch[k] for k in TEXT_KEYS}, 5, 256, proc.tokenizer.pad_id)
  entry = dict(config.data.sources.chat)
  for row, (name, record) in enumerate(_records(dataset)):
    fmt = "vision_chat" if name == "chat" else "llava"
    enc = proc.encode(record_messages(record, fmt, entry | {"images_field": "images", "videos_field": "videos"},
                                      "assistant"), base_dir=str(dataset))
    n = len(enc.ids)
    np.testing.assert_array_equal(batch["input_ids"][row, :n], enc.ids)
    np.testing.assert_array_equal(batch["loss_mask"][row, :n - 1], enc.learn[1:])
    np.testing.assert_array_equal(batch["mrope_positions"][row, :, :n], enc.rope)
    patches = [it.pixels.patches for it in enc.items]
    p = sum(len(x) for x in patches)
    assert (batch["pixel_segment_ids"][row] > 0).sum() == p
    if patches:
      np.testing.assert_array_equal(batch["pixel_values"][row, :p], np.concatenate(patches))
    assert not batch["pixel_values"][row, p:].any()
    grids = [it.pixels.grid for it in enc.items]
    np.testing.assert_array_equal(batch["vision_grid_thw"][row, :len(grids)], np.array(grids).reshape(-1, 3))
    assert (batch["vision_segment_ids"][row] > 0).sum() == len(grids)


def _check_row_consistency(batch, proc, merge):
  vision_ids = proc.vision_token_ids
  for r in range(batch["input_ids"].shape[0]):
    items = batch["vision_segment_ids"][r] > 0
    grids = batch["vision_grid_thw"][r][items]
    per_item = np.prod(grids, axis=1)
    counts = np.bincount(batch["pixel_segment_ids"][r], minlength=len(per_item) + 1)[1:len(per_item) + 1]
    np.testing.assert_array_equal(counts, per_item)  # every item's patches, in order
    is_vision = np.isin(batch["input_ids"][r], vision_ids)
    assert is_vision.sum() == per_item.sum() // merge**2  # one placeholder per merged feature
    assert not batch["loss_mask"][r][is_vision].any()
    for k, seg in enumerate(batch["vision_segment_ids"][r][items]):  # items sit in their documents
      assert is_vision[batch["segment_ids"][r] == seg].any(), (r, k)


def test_packed_batches_are_consistent(make_config, qwen_vl_dir, dataset):
  config = _config(make_config, qwen_vl_dir, dataset, split_all=False, eval_fraction=0.0, epochs=2)
  proc = VisionProcessor(qwen_vl_dir)
  with build_pipeline(config) as it:
    batches = list(it)
    stats = it.stats()
  # Mixed sources end with the first one used up (4 llava + 4 chat documents).
  assert stats["documents"] == 8 and stats["images"] > 0 and stats["videos"] > 0
  assert stats["vision_items"] == stats["images"] + stats["videos"]
  for batch in batches:
    check_contract({k: batch[k] for k in TEXT_KEYS}, 2, 256, proc.tokenizer.pad_id)
    _check_row_consistency(batch, proc, merge=2)
    assert batch["pixel_values"].shape == (2, 1024, 1536)


def test_internvl_tiles(make_config, internvl_dir, dataset):
  config = _config(make_config, internvl_dir, dataset, packing="none", batch=5, seq_len=1800,
                   vision={"max_tiles": 2, "video_num_frames": 2})
  proc = VisionProcessor(internvl_dir, max_tiles=2, video_num_frames=2)
  with build_pipeline(config, split="eval") as it:
    batch = next(it)
  assert batch["pixel_values"].shape == (5, 1800 // 256, 3, 448, 448)
  assert "mrope_positions" not in batch
  context = proc.tokenizer.token_to_id("<IMG_CONTEXT>")
  for r in range(5):
    tiles = (batch["pixel_segment_ids"][r] > 0).sum()
    assert (batch["input_ids"][r] == context).sum() == 256 * tiles
  # wide image: 2x1 tiles + thumbnail; the video: 2 frames; text: none; tall + wide images: 3 + 3;
  # tall image + video: 3 + 2
  assert [(batch["pixel_segment_ids"][r] > 0).sum() for r in range(5)] == [3, 2, 0, 6, 5]
  np.testing.assert_array_equal(batch["vision_grid_thw"][3, :7], [[1, 1, 1]] * 6 + [[0, 0, 0]])


def test_bad_media_is_named_or_skipped(make_config, qwen_vl_dir, dataset, tmp_path):
  bad = tmp_path / "bad.jsonl"
  (tmp_path / "broken.png").write_bytes(b"not an image")
  rows = [{"images": ["missing.png"], "messages": [{"role": "user", "content": "<image>hi"},
                                                   {"role": "assistant", "content": "ok"}]},
          {"images": ["broken.png"], "messages": [{"role": "user", "content": "<image>hi"},
                                                  {"role": "assistant", "content": "ok"}]}]
  bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
  sources = {"bad": {"kind": "jsonl", "path": str(bad), "format": "llava", "holdout": "all"},
             "good": {"kind": "jsonl", "path": str(dataset / "chat.jsonl"), "format": "vision_chat", "holdout": "all"}}
  config = make_config(sources=sources, batch=2, model_vocab=512, tokenizer=qwen_vl_dir, seq_len=256)
  with pytest.raises(DataError) as err:
    with build_pipeline(config, split="eval") as it:
      next(it)
  assert f"{bad}:1" in str(err.value) and "missing.png" in str(err.value) and "image file not found" in str(err.value)
  config = make_config(sources=sources, batch=2, model_vocab=512, tokenizer=qwen_vl_dir, seq_len=256,
                       on_bad_record="skip")
  with build_pipeline(config, split="eval") as it:
    list(it)
    stats = it.stats()
  assert stats["bad_records"] == {"bad_media": {str(bad): 2}} and stats["documents"] == 3
  assert any("broken.png" in e for e in stats["bad_record_examples"]["bad_media"])


def test_pixel_cap(make_config, qwen_vl_dir, dataset):
  config = _config(make_config, qwen_vl_dir, dataset, vision={"max_patches": 200})
  with pytest.raises(DataError, match=r"chat.jsonl:1: bad record \(too_many_pixels: 308 pixel patches > "
                                      r"data.vision.max_patches=200"):
    with build_pipeline(config, split="eval") as it:
      next(it)


def test_overlong_multimodal_document_is_dropped_not_split(make_config, qwen_vl_dir, dataset):
  config = _config(make_config, qwen_vl_dir, dataset, seq_len=64, overlong="split")
  with build_pipeline(config, split="eval") as it:
    batches = list(it)
    stats = it.stats()
  # The three records with images are longer than 64 tokens; the short video and the text fit.
  assert stats["dropped_overlong"] == 3 and stats["documents"] == 2
  assert sum((b["vision_segment_ids"] > 0).sum() for b in batches) == 1


def test_resume_is_exact(make_config, qwen_vl_dir, dataset):
  config = _config(make_config, qwen_vl_dir, dataset, split_all=False, eval_fraction=0.0)
  with build_pipeline(config) as it:
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
  with build_pipeline(config) as it:
    it.set_state(json.loads(json.dumps(state)))
    got = [next(it) for _ in range(2)]
  for a, b in zip(want, got):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
