"""The generated vision-language dataset: answers follow from the pixels, both layouts hold the
same samples, blank media keep questions and answers, the pipeline reads it, generation is
idempotent."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxtrain.data import build_pipeline
from jaxtrain.data.vision import media, synthetic
from jaxtrain.data.vision.records import record_messages


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth"))
  return out, synthetic.ensure(out, train=40, heldout=10, seed=3, video_share=0.3)


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _mask(rgb):
  return np.abs(rgb.astype(int) - synthetic.BACKGROUND).sum(-1) > 60


def _check_answer(record, root):
  item = record["messages"][0]["content"][0]
  path = os.path.join(root, "vision_chat", item.get("image", item.get("video")))
  task, answer = record["task"], record["answer"]
  if task == "motion":
    info = media.probe_video(path)
    first, last = media.read_frames(path, [0, info.total_frames - 1])
    (y0, x0), (y1, x1) = (np.argwhere(_mask(f)).mean(0) for f in (first, last))
    dy, dx = y1 - y0, x1 - x0
    moved = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
    assert moved == answer, record
    return
  rgb = media.load_image(path)
  fg = _mask(rgb)
  if task == "colour":
    colours = {k: np.abs(rgb[fg].astype(int) - v).sum(-1).mean() for k, v in synthetic.COLOURS.items()}
    assert min(colours, key=colours.get) == answer, record
  elif task == "position":
    y, x = np.argwhere(fg).mean(0) / rgb.shape[0]
    assert (("top" if y < 0.5 else "bottom") + " " + ("left" if x < 0.5 else "right")) == answer, record
  elif task == "count":
    from scipy import ndimage
    assert ndimage.label(fg)[1] == int(answer), record
  else:
    assert fg.any() and answer.isdigit()


def test_answers_need_the_pixels(synth):
  root, paths = synth
  assert os.path.isfile(os.path.join(paths["processor/internvl"], "preprocessor_config.json"))
  records = _read(paths["vision_chat/train"]) + _read(paths["vision_chat/heldout"])
  assert {r["task"] for r in records} == set(synthetic.TASKS)
  for record in records:
    _check_answer(record, root)


def test_layouts_hold_the_same_samples(synth):
  root, paths = synth
  entry = {"messages_field": "messages", "images_field": "images", "videos_field": "videos"}
  for split in ("train", "heldout"):
    chat, llava, blank = (_read(paths[f"{layout}/{split}"]) for layout in ("vision_chat", "llava", "blank"))
    assert len(chat) == len(llava) == len(blank)
    for a, b, c in zip(chat, llava, blank):
      converted = record_messages(b, "llava", entry, "assistant")
      media_a = [x for x in a["messages"][0]["content"] if x["type"] != "text"]
      assert [x for x in converted[0]["content"] if x["type"] != "text"] == media_a
      assert converted[0]["content"][-1]["text"] == "\n" + a["messages"][0]["content"][1]["text"]
      assert converted[1] == a["messages"][1] and b["answer"] == a["answer"] == c["answer"]
      assert c["messages"][0]["content"][0][media_a[0]["type"]].endswith("blank." + ("png" if "image" in media_a[0]
                                                                                       else "mp4"))
  held = {json.dumps(r["messages"][0]["content"][0]) for r in _read(paths["vision_chat/heldout"])}
  assert not held & {json.dumps(r["messages"][0]["content"][0]) for r in _read(paths["vision_chat/train"])}


def test_pipeline_reads_every_layout(synth, make_config):
  root, paths = synth
  qwen_vl_dir = paths["processor/qwen3_vl"]  # the dataset's own processor directory
  sources = {"chat": {"kind": "jsonl", "path": paths["vision_chat/train"], "format": "vision_chat", "holdout": "all"},
             "llava": {"kind": "jsonl", "path": paths["llava/train"], "format": "llava", "holdout": "all"},
             "blank": {"kind": "jsonl", "path": paths["blank/train"], "format": "vision_chat", "holdout": "all"}}
  config = make_config(sources=sources, batch=4, model_vocab=512, tokenizer=qwen_vl_dir, seq_len=256)
  with build_pipeline(config, split="eval") as it:
    list(it)
    stats = it.stats()
  assert stats["documents"] == 120 and stats["bad_records_skipped"] == 0
  assert stats["images"] + stats["videos"] == 120


def test_generation_is_idempotent(synth):
  root, paths = synth
  stamp = os.path.getmtime(paths["llava/train"])
  assert synthetic.ensure(root, train=40, heldout=10, seed=3, video_share=0.3) == paths
  assert os.path.getmtime(paths["llava/train"]) == stamp
