"""Local vision-language model directories (tiny tokenizer, the real chat templates and
processor configs of Qwen3-VL and InternVL) and image / video files. Nothing is downloaded."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
                     "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# The processor configs Qwen3-VL checkpoints ship.
QWEN3_VL_IMAGE = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                  "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                  "image_processor_type": "Qwen2VLImageProcessorFast"}
QWEN3_VL_VIDEO = {"size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16,
                  "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                  "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                  "video_processor_type": "Qwen3VLVideoProcessor"}
# ... and those of InternVL3.5 in the transformers layout (OpenGVLab/InternVL3_5-*-HF).
INTERNVL_IMAGE = {"crop_to_patches": False, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
                  "do_resize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "max_patches": 12,
                  "min_patches": 1, "processor_class": "InternVLProcessor", "resample": 3,
                  "rescale_factor": 0.00392156862745098, "size": {"height": 448, "width": 448},
                  "image_processor_type": "GotOcr2ImageProcessorFast"}
INTERNVL_VIDEO = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                  "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "initial_shift": True,
                  "processor_class": "InternVLProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                  "size": {"height": 448, "width": 448}, "video_processor_type": "InternVLVideoProcessor"}
INTERNVL_PROCESSOR = {"image_seq_length": 256, "processor_class": "InternVLProcessor"}

CORPUS = ["What colour is the square? The square is red.", "How many circles are there? There are 3 circles.",
          "Where is the star? Top left. Which way does the ball move? Left to right.",
          "Describe the picture and the video in one sentence. seconds Frame1: Frame2:"] * 4


def build_vlm_dir(path: pathlib.Path, kind: str) -> str:
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  specials = QWEN_SPECIALS if kind == "qwen3_vl" else INTERNVL_SPECIALS
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  path.mkdir(parents=True, exist_ok=True)
  tok.save(str(path / "tokenizer.json"))
  tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20, "bos_token": None,
             "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  if kind == "qwen3_vl":
    template = (FIXTURES / "qwen3_vl_chat_template.jinja").read_text()
    configs = {"preprocessor_config.json": QWEN3_VL_IMAGE, "video_preprocessor_config.json": QWEN3_VL_VIDEO}
  else:
    template = (FIXTURES / "internvl_chat_template.jinja").read_text()
    configs = {"preprocessor_config.json": INTERNVL_IMAGE, "video_preprocessor_config.json": INTERNVL_VIDEO,
               "processor_config.json": INTERNVL_PROCESSOR}
    tok_cfg["extra_special_tokens"] = {"start_image_token": "<img>", "end_image_token": "</img>",
                                       "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
  (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
  (path / "chat_template.jinja").write_text(template)
  for name, cfg in configs.items():
    (path / name).write_text(json.dumps(cfg, indent=2))
  return str(path)


@pytest.fixture(scope="session")
def qwen_vl_dir(tmp_path_factory) -> str:
  return build_vlm_dir(tmp_path_factory.mktemp("qwen3_vl"), "qwen3_vl")


@pytest.fixture(scope="session")
def internvl_dir(tmp_path_factory) -> str:
  return build_vlm_dir(tmp_path_factory.mktemp("internvl"), "internvl")


def write_image(path: pathlib.Path, height: int, width: int, seed: int = 0, mode: str = "RGB") -> str:
  """Noise plus a gradient (so resampling is exercised everywhere)."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
  img = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
  im = Image.fromarray(img)
  if mode != "RGB":
    im = im.convert(mode)
  im.save(path)
  return str(path)


def write_video(path: pathlib.Path, frames: int, height: int, width: int, fps: int = 10, seed: int = 0,
                codec: str = "libx264") -> str:
  """A moving square over noise, encoded with PyAV (h264/yuv420p by default, as most real videos)."""
  import av

  rng = np.random.default_rng(seed)
  background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if codec in ("png", "rawvideo") else "yuv420p"
    for t in range(frames):
      img = background.copy()
      x0 = (t * 7) % max(width - 16, 1)
      img[height // 3:height // 3 + 16, x0:x0 + 16] = (255, 40, 40)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> pathlib.Path:
  d = tmp_path_factory.mktemp("media")
  write_image(d / "wide.png", 60, 100, seed=1)
  write_image(d / "tall.jpg", 300, 170, seed=2)
  write_image(d / "big.png", 700, 900, seed=3)
  write_image(d / "gray.png", 64, 48, seed=4, mode="L")
  write_video(d / "clip.mp4", 25, 90, 120, fps=10, seed=5)  # odd frame count after sampling
  write_video(d / "short.mp4", 8, 64, 80, fps=4, seed=6)
  write_video(d / "clip.mkv", 12, 48, 64, fps=6, seed=7, codec="ffv1")  # no frame count in the header
  (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
  return d
