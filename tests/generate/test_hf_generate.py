"""Greedy decoding of a left-padded batch of prompts of different lengths equals `transformers`
`generate()` greedy on the same Hugging Face weights, for a dense (sliding window), an MoE, an
MLA and a sinks family, with an EOS that ends one row early."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.conftest import build_hf

torch = pytest.importorskip("torch")

import jaxtrain  # noqa: E402
from jaxtrain.converters.families import FAMILIES  # noqa: E402
from jaxtrain.generate.sampler import Sampler, SamplingParams  # noqa: E402

PROMPT_LENGTHS = (5, 11, 2)
NEW = 10
PAD = 0


def _hf_greedy(model, prompts, eos):
  P = max(map(len, prompts))
  ids = torch.full((len(prompts), P), PAD, dtype=torch.long)
  mask = torch.zeros((len(prompts), P), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, P - len(p):] = torch.tensor(p)
    mask[i, P - len(p):] = 1
  model.generation_config.eos_token_id = eos
  with torch.no_grad():
    out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD,
                         output_scores=True, return_dict_in_generate=True)
  scores = torch.stack(out.scores, 1).numpy()  # [B, steps, V]
  return out.sequences[:, P:].numpy(), scores


def _until_eos(row, eos):
  row = list(row)
  return row[:row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_greedy_matches_transformers_generate(family, tmp_path):
  hf = build_hf(family, str(tmp_path / "hf"), seed=11, **FAMILIES[family].example)
  with torch.no_grad():  # well separated logits: argmax ties cannot flip between implementations
    hf.get_output_embeddings().weight.mul_(6.0)
  hf.save_pretrained(str(tmp_path / "hf"))
  rng = np.random.default_rng(5)
  prompts = [rng.integers(1, hf.config.vocab_size, n).tolist() for n in PROMPT_LENGTHS]
  full, scores = _hf_greedy(hf, prompts, eos=None)
  top2 = np.sort(scores, axis=-1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0]).min() > 1e-3, "argmax too close to call"
  eos = int(full[1, 4])  # row 1 ends at its 5th token (others may too)
  expected, _ = _hf_greedy(hf, prompts, eos=eos)

  model = jaxtrain.from_pretrained(str(tmp_path / "hf"), dtype="float32")
  batch = Sampler(model, eos_ids=(eos,), pad_id=PAD, decode_chunk=4).generate(
      prompts, SamplingParams(max_new_tokens=NEW, temperature=0.0))
  for i, c in enumerate(batch.completions):
    assert c.token_ids == _until_eos(expected[i], eos), (family, i)
    assert c.finish_reason == ("stop" if eos in c.token_ids else "length")
  assert len(batch.completions[1].token_ids) <= 5 and batch.completions[1].finish_reason == "stop"
