"""VisionProcessor against transformers' own Qwen3-VL and InternVL processors (hf_oracle.py):
token ids identical, pixel values within 1e-5, for text, one image, several images, one video,
several videos and a mix, with both of transformers' image backends."""

from __future__ import annotations

import types

import numpy as np
import pytest

from jaxtrain.data.vision import media
from jaxtrain.data.vision.processor import VisionProcessor
from tests.data.vision import hf_oracle


def _user(*items):
  content = []
  for kind, value in items:
    content.append({"type": "text", "text": value} if kind == "text" else {"type": kind, kind: value})
  return {"role": "user", "content": content}


def _cases(m):
  return {
      "text": [{"role": "system", "content": "You are helpful."}, _user(("text", "What colour is the square?")),
               {"role": "assistant", "content": "Red."}],
      "one_image": [_user(("image", m / "wide.png"), ("text", "What colour is the square?"))],
      "several_images": [_user(("text", "Compare"), ("image", m / "tall.jpg"), ("image", m / "wide.png"),
                               ("image", m / "gray.png"))],
      "one_video": [_user(("video", m / "clip.mp4"), ("text", "Which way does it move?"))],
      "several_videos": [_user(("video", m / "short.mp4"), ("text", "and"), ("video", m / "clip.mp4"))],
      "mixed": [_user(("image", m / "big.png"), ("text", "Describe the picture and the video."),
                      ("video", m / "clip.mp4")),
                {"role": "assistant", "content": "A gradient; the square moves right."},
                _user(("image", m / "wide.png"), ("text", "And this one?"))],
  }


CASES = ["text", "one_image", "several_images", "one_video", "several_videos", "mixed"]
# InternVL samples a fixed frame count: transformers' InternVL processor cannot batch videos of
# different lengths.
FRAMES = {"qwen3_vl": 0, "internvl": 4}


def _stringify(messages):
  return [{**m, "content": [{k: str(v) for k, v in b.items()} for b in m["content"]]}
          if isinstance(m["content"], list) else m for m in messages]


def _compare(ours: dict, ref: dict) -> None:
  assert sorted(ours) == sorted(ref)
  for key, want in ref.items():
    got = ours[key]
    assert got.shape == want.shape, (key, got.shape, want.shape)
    if np.issubdtype(want.dtype, np.floating):
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=key)
    else:
      np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.fixture(scope="module")
def oracles(qwen_vl_dir, internvl_dir):
  dirs = {"qwen3_vl": qwen_vl_dir, "internvl": internvl_dir}
  cache = {}

  def get(kind, backend):
    if (kind, backend) not in cache:
      cache[kind, backend] = (hf_oracle.processor(dirs[kind], kind, backend),
                              VisionProcessor(dirs[kind], image_backend=backend, video_num_frames=FRAMES[kind]))
    return cache[kind, backend]

  return get


@pytest.mark.parametrize("kind", ["qwen3_vl", "internvl"])
@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(oracles, media_dir, kind, case):
  hf, ours = oracles(kind, "pil")
  messages = _stringify(_cases(media_dir)[case])
  kwargs = {"processor_kwargs": {"num_frames": FRAMES[kind]}} if FRAMES[kind] else {}
  ref = hf_oracle.apply(hf, messages, "pil", add_generation_prompt=True, **kwargs)
  _compare(ours.apply_chat_template(messages, add_generation_prompt=True), ref)


@pytest.mark.parametrize("kind", ["qwen3_vl", "internvl"])
@pytest.mark.parametrize("case", ["several_images", "mixed"])
def test_matches_transformers_torchvision_backend(oracles, media_dir, kind, case):
  hf, ours = oracles(kind, "torchvision")
  messages = _stringify(_cases(media_dir)[case])
  kwargs = {"processor_kwargs": {"num_frames": FRAMES[kind]}} if FRAMES[kind] else {}
  _compare(ours.apply_chat_template(messages), hf_oracle.apply(hf, messages, "torchvision", **kwargs))


def test_rope_positions_match_transformers(oracles, media_dir):
  from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
  import torch

  hf, ours = oracles("qwen3_vl", "pil")
  messages = _stringify(_cases(media_dir)["mixed"])
  enc = ours.encode(messages, loss_on="assistant")
  ref = hf_oracle.apply(hf, messages, "pil")
  stand_in = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2)))
  stand_in.get_vision_position_ids = types.MethodType(Qwen3VLModel.get_vision_position_ids, stand_in)
  want, _ = Qwen3VLModel.get_rope_index(stand_in, torch.tensor(ref["input_ids"]), torch.tensor(ref["mm_token_type_ids"]),
                                        image_grid_thw=torch.tensor(ref["image_grid_thw"]),
                                        video_grid_thw=torch.tensor(ref["video_grid_thw"]))
  np.testing.assert_array_equal(enc.rope, want[:, 0].numpy())


@pytest.mark.parametrize("kind", ["qwen3_vl", "internvl"])
def test_loss_mask_covers_assistant_turns_only(oracles, media_dir, kind):
  _, ours = oracles(kind, "pil")
  enc = ours.encode(_stringify(_cases(media_dir)["mixed"]), loss_on="assistant")
  learned = ours.tokenizer.decode(enc.ids[enc.learn])
  assert learned == "A gradient; the square moves right.<|im_end|>\n"
  assert not enc.learn[np.isin(enc.ids, ours.vision_token_ids)].any()
  assert len(enc.items) == 3 and [it.kind for it in enc.items] == [1, 2, 1]


def test_internvl_frame_sampling_matches_transformers():
  import torch
  from transformers.video_utils import VideoMetadata
  from jaxtrain.data.vision.internvl import sample_frames

  hf_oracle.install_torchvision_kernels()
  from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

  stand_in = types.SimpleNamespace(num_frames=None, initial_shift=True)
  for total, n, fps in [(25, 4, None), (97, 8, None), (30, 7, None), (300, None, 1.0), (31, 31, None)]:
    md = VideoMetadata(total_num_frames=total, fps=10.0)
    want = InternVLVideoProcessor.sample_frames(stand_in, md, num_frames=n, fps=fps).numpy()
    np.testing.assert_array_equal(sample_frames(total, 10.0, num_frames=n, fps=fps, initial_shift=True), want)
  del torch


def test_chat_templates_are_the_shipped_ones():
  import hashlib
  from jaxtrain.data.vision.processor_dirs import chat_template

  # Qwen3-VL-*-Instruct's chat template, byte for byte (5,292 bytes).
  digest = hashlib.sha256(chat_template("qwen3_vl").encode()).hexdigest()
  assert digest == "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
  assert chat_template("internvl").startswith("{% for message in messages %}{{'<|im_start|>'")


def test_container_without_frame_count(media_dir):
  info = media.probe_video(str(media_dir / "clip.mkv"))
  assert (info.total_frames, info.fps, info.height, info.width) == (12, 6.0, 48, 64)
  frames = media.read_frames(str(media_dir / "clip.mkv"), [0, 11, 11])
  assert frames.shape == (3, 48, 64, 3) and (frames[1] == frames[2]).all()


@pytest.mark.parametrize("name,message", [("missing.png", "image file not found"), ("broken.png", "cannot read image"),
                                          ("missing.mp4", "video file not found"), ("broken.mp4", "cannot open video")])
def test_bad_media_names_the_file(oracles, media_dir, name, message):
  _, ours = oracles("qwen3_vl", "pil")
  kind = "video" if name.endswith(".mp4") else "image"
  with pytest.raises(media.MediaError, match=message) as err:
    ours.apply_chat_template([_user((kind, str(media_dir / name)))])
  assert str(media_dir / name) in str(err.value)
