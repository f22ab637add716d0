"""Generation with pictures against `transformers`: a tiny random Qwen3-VL and InternVL, each saved
as a Hugging Face directory with a processor (tokenizer, chat template, preprocessor_config.json)
and loaded by `TextModel`; greedy decoding of chat prompts with PNG images (one batch: pictures of
different sizes, left-padded, and a text-only row) equals `model.generate(..., do_sample=False)`
of transformers token for token, prompt by prompt. Qwen3-VL: a picture spans fewer positions than
tokens (3-D positions), so the tokens match only if decoding continues from the prompt's furthest
position + 1 (without that shift the test fails); InternVL: the reply depends on the picture
(without the visual features the test fails). Then the errors (an image for a text-only model,
an unreadable image file, more patches than model.vision.row_capacity) and the `jaxtrain
generate` / `jaxtrain chat` commands with images."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
from flax import nnx

from tests.models import hf_vlm as H

torch = pytest.importorskip("torch")

from jaxtrain import cli  # noqa: E402
from jaxtrain.data.vision.media import MediaError  # noqa: E402
from jaxtrain.data.vision.processor_dirs import write_processor_dir  # noqa: E402
from jaxtrain.models import factory  # noqa: E402
from jaxtrain.textgen import TextModel  # noqa: E402

NEW = 10
CORPUS = ["What colour is the square? It is red.", "How many circles are there? Three.", "blue green yellow"]


def _edit_json(path: str, **changes) -> None:
  with open(path) as f:
    cfg = json.load(f)
  with open(path, "w") as f:
    json.dump({**cfg, **changes}, f)


def vlm_dir(directory: str, family: str = "qwen3_vl", seed: int = 0):
  """A random transformers Qwen3-VL (16-pixel patches) or InternVL (16-pixel tiles of 4 tokens)
  with its processor files, set up to match; returns the transformers model."""
  write_processor_dir(directory, family, CORPUS, vocab_size=300)
  with open(os.path.join(directory, "tokenizer.json")) as f:
    tok = json.load(f)
  vocab = len(tok["model"]["vocab"]) + sum(t["id"] >= len(tok["model"]["vocab"]) for t in tok["added_tokens"])
  ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
  preprocessor = os.path.join(directory, "preprocessor_config.json")
  if family == "qwen3_vl":
    _edit_json(preprocessor, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})  # small pictures
    hf = H.build_hf_vlm(family, seed=seed, text_config={"vocab_size": vocab},
                        vision_config={"patch_size": 16}, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"])
  else:
    _edit_json(preprocessor, size={"height": 16, "width": 16}, max_patches=4)  # the example's 16-pixel tiles
    _edit_json(os.path.join(directory, "processor_config.json"), image_seq_length=4)
    hf = H.build_hf_vlm(family, seed=seed, text_config={"vocab_size": vocab}, image_token_id=ids["<IMG_CONTEXT>"])
  with torch.no_grad():  # sharper logits (a flat random model repeats one token whatever the positions),
    for name, p in hf.named_parameters():  # and InternVL's visual features weigh on the reply
      if "embed_tokens" in name or "lm_head" in name:
        p.mul_(8.0)
      elif "multi_modal_projector" in name and name.endswith("weight") and "norm" not in name:
        p.mul_(4.0)
  hf.save_pretrained(directory)
  return hf


@pytest.fixture(scope="module", params=["qwen3_vl", "internvl"])
def any_model_dir(request, tmp_path_factory):
  return _model_dir(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  return _model_dir("qwen3_vl", tmp_path_factory)


_dirs: dict = {}


def _model_dir(family, tmp_path_factory):
  if family not in _dirs:
    directory = str(tmp_path_factory.mktemp(family))
    hf = vlm_dir(directory, family)
    for name, (h, w) in {"wide.png": (48, 96), "square.png": (64, 64)}.items():
      H.picture(h, w, seed=len(name)).save(os.path.join(directory, name))
    _dirs[family] = (directory, hf)
  return _dirs[family]


def conversations(directory):
  return [
      [{"role": "user", "content": [{"type": "image", "image": os.path.join(directory, "wide.png")},
                                    {"type": "text", "text": "What colour is the square?"}]}],
      [{"role": "system", "content": "blue green"},
       {"role": "user", "content": [{"type": "text", "text": "How many circles?"},
                                    {"type": "image", "image": os.path.join(directory, "square.png")}]}],
      [{"role": "user", "content": "It is red."}],
  ]


def hf_greedy(hf, lm, messages, stop_ids):
  """transformers' greedy continuation of one conversation (the processor's arrays, batch of
  one), cut before the first stop token."""
  if any(isinstance(m["content"], list) for m in messages):
    inputs = lm.processor.apply_chat_template(messages, add_generation_prompt=True)
  else:
    ids = np.asarray([lm.chat_prompt(messages)])
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if lm.processor.kind == "qwen3_vl":
      inputs["mm_token_type_ids"] = np.zeros_like(ids)
  args = {k: torch.tensor(v) for k, v in inputs.items()}
  with torch.no_grad():
    out = hf.generate(**args, max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
  new = out[0, args["input_ids"].shape[1]:].tolist()
  cut = next((i for i, t in enumerate(new) if t in stop_ids), len(new))
  return new[:cut]


def test_greedy_generation_with_images_equals_transformers(any_model_dir):
  directory, hf = any_model_dir
  lm = TextModel.load(directory)
  prompts = [lm.chat_prompt(m) for m in conversations(directory)]
  assert [bool(getattr(p, "pixels", None)) for p in prompts] == [True, True, False]
  if "image_grid_thw" in prompts[0].pixels:  # Qwen3-VL: 48 x 96 and 64 x 64 pixels, 16-pixel patches
    assert [p.pixels["image_grid_thw"][0].tolist() for p in prompts[:2]] == [[1, 4, 6], [1, 4, 4]]
  else:  # InternVL: 16-pixel tiles (and a thumbnail tile for a picture of several)
    assert [len(p.pixels["pixel_values"]) for p in prompts[:2]] == [3, 5]
  ours = lm.generate_ids(prompts, max_new_tokens=NEW, temperature=0)
  theirs = [hf_greedy(hf, lm, m, lm.stop_ids) for m in conversations(directory)]
  print("ours", ours, "\ntransformers", theirs)
  assert ours == theirs
  assert all(len(t) >= 5 and len(set(t)) >= 3 for t in theirs)  # decoding compared, not one repeated token
  # a plain-text prompt with a picture: the image goes first, written as the chat template writes it
  plain = lm.encode_prompt("What colour is the square?", [os.path.join(directory, "square.png")])
  text = lm.tokenizer.decode(plain.ids)
  assert text.startswith("<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>What colour"
                         if "image_grid_thw" in plain.pixels else "<img>" + "<IMG_CONTEXT>" * 20 + "</img>\nWhat")  # 5 tiles


def test_image_errors(model_dir, tmp_path):
  directory, _ = model_dir
  lm = TextModel.load(directory)
  with pytest.raises(MediaError, match="missing.png: image file not found"):
    lm.generate(["Hi"], images=[[str(tmp_path / "missing.png")]])
  (tmp_path / "broken.png").write_bytes(b"not a picture")
  with pytest.raises(MediaError, match="broken.png: cannot read image"):
    lm.chat_prompt([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "broken.png")}]}])
  big = tmp_path / "big.png"
  H.picture(128, 128, seed=1).save(big)  # 8 x 8 patches
  cfg = lm.model.cfg
  # the checks come before any computation: models of abstract arrays (nothing allocated) do
  abstract = lambda c: nnx.eval_shape(lambda: factory.create(c))  # noqa: E731
  capped = TextModel(abstract(cfg.replace(vision=dataclasses.replace(cfg.vision, row_capacity=32))), lm.tokenizer,
                     processor_dir=directory)
  with pytest.raises(ValueError, match="64 vision patches, more than model.vision.row_capacity=32"):
    capped.generate(["Hi"], images=[[str(big)]], max_new_tokens=2)
  text_only = TextModel(abstract(cfg.replace(vision=dataclasses.replace(cfg.vision, tower="none"))), lm.tokenizer,
                        processor_dir=directory)
  with pytest.raises(ValueError, match="text-only model"):
    text_only.generate(["Hi"], images=[[str(big)]])
  with pytest.raises(ValueError, match="prompt 0 has images, but this is a text-only model"):
    text_only.generate_ids([lm.encode_prompt("Hi", [str(big)])])


# -- the command line ------------------------------------------------------------------------------

def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def test_generate_and_chat_commands_take_images(model_dir, capsys, monkeypatch, tmp_path):
  """`jaxtrain generate --image` and a JSONL prompts file with images (relative paths), and
  `jaxtrain chat --image` / `/image PATH`: the replies transformers gives."""
  directory, hf = model_dir
  lm = TextModel.load(directory)
  convs = conversations(directory)
  decode = lambda ids: lm.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
  first = decode(hf_greedy(hf, lm, convs[0], lm.stop_ids)[:6])
  code, out, err = _run(capsys, "generate", "--model", directory, "--image", os.path.join(directory, "wide.png"),
                        "--prompt", "What colour is the square?", "--chat", "--temperature", "0",
                        "--max-new-tokens", "6")
  assert code == 0, err
  assert out == first + "\n"

  (tmp_path / "pics").mkdir()
  H.picture(64, 64, seed=len("square.png")).save(tmp_path / "pics" / "square.png")  # == directory/square.png
  plain = lm.encode_prompt("Count:", [os.path.join(directory, "square.png")])
  with open(tmp_path / "prompts.jsonl", "w") as f:
    f.write(json.dumps({"prompt": "Count:", "images": ["pics/square.png"]}) + "\n")
    second = convs[1][:1] + [{"role": "user", "content": [{"type": "text", "text": "How many circles?"},
                                                          {"type": "image", "image": "pics/square.png"}]}]
    f.write(json.dumps({"messages": second}) + "\n")
  code, out, err = _run(capsys, "generate", "--model", directory, "--prompts-file", str(tmp_path / "prompts.jsonl"),
                        "--temperature", "0", "--max-new-tokens", "6", "--jsonl")
  assert code == 0, err
  rows = [json.loads(line) for line in out.splitlines()]
  assert rows[0]["images"] == [str(tmp_path / "pics" / "square.png")]
  assert rows[0]["completion"] == decode(lm.generate_ids([plain], max_new_tokens=6, temperature=0)[0])
  assert rows[1]["completion"] == decode(hf_greedy(hf, lm, convs[1], lm.stop_ids)[:6])

  # chat: --image shows the picture with the first message; /image attaches one to the next
  monkeypatch.setattr("sys.stdin", io.StringIO("What colour is the square?\n/reset\n/image "
                                               f"{os.path.join(directory, 'wide.png')}\nWhat colour is the square?\n"
                                               f"/image {tmp_path / 'nothing.png'}\nHi\n"))
  code, out, err = _run(capsys, "chat", "--model", directory, "--image", os.path.join(directory, "wide.png"),
                        "--temperature", "0", "--max-new-tokens", "6", "--stream-chunk", "4")
  assert code == 0, err
  assert out == f"{first}\n{first}\n"
  assert "nothing.png: image file not found" in err

  # an image that cannot be read: the error names the file
  code, _, err = _run(capsys, "generate", "--model", directory, "--image", str(tmp_path / "nothing.png"),
                      "--prompt", "Hi")
  assert code == 1 and "nothing.png: image file not found" in err
