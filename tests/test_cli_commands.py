"""The `jaxtrain` command: help for every subcommand, the extension point (plan, any `python -m`
module), and generate / chat / eval end to end on an HF directory (greedy tokens checked against
`transformers`) and on a jaxtrain workdir (against the run's own sample and held-out loss)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os

import numpy as np
import pytest

from jaxtrain import cli
from tests.helpers import REPO

PROMPT = "The weather in Oslo"


def _run(capsys, *argv):
  code = cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def test_every_command_has_useful_help(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for name in ("train", "convert", "generate", "chat", "eval", "plan"):
    assert name in out
  expected = {"train": ["--config", "--coordinator", "resumes"], "convert": ["import-hf", "export-hf"],
              "generate": ["--model", "--prompts-file", "--temperature", "--top-k", "--chat", "--jsonl"],
              "chat": ["--model", "--system", "/reset", "--stream-chunk"],
              "eval": ["--model", "--config", "perplexity", "holdout=all"]}
  for name, words in expected.items():
    code, out, err = _run(capsys, name, "--help")
    assert code == 0, (name, err)
    assert out.startswith(f"usage: jaxtrain {name}")
    for word in words:
      assert word in out, (name, word)
  assert _run(capsys, "generate", "--model", "x")[0] == 2  # no prompt: a usage error
  assert cli.main([]) == 2


def test_subcommands_plug_in_as_modules(monkeypatch, capsys, tmp_path):
  # A module that is not installed (jaxtrain.plan before it lands) says so.
  monkeypatch.setitem(cli.COMMANDS, "plan", ("jaxtrain.no_such_plan", "plan"))
  code, _, err = _run(capsys, "plan", "--config", "configs/quickstart.py")
  assert code == 2 and "not available in this installation" in err and "jaxtrain.no_such_plan" in err
  # A `python -m` module runs with the remaining arguments; its exit status comes back.
  (tmp_path / "jt_extra.py").write_text("import sys\nprint('args', sys.argv[1:])\nsys.exit(3)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(cli.COMMANDS, "extra", ("jt_extra", "an extra command"))
  code, out, _ = _run(capsys, "extra", "--flag", "x y")
  assert code == 3 and out == "args ['--flag', 'x y']\n"


def test_console_script_points_at_the_cli():
  scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
  assert scripts.get("jaxtrain") == "jaxtrain.cli:main"


# -- an HF directory: tokens checked against transformers ----------------------------------------

@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from tests.converters.conftest import build_hf
  from tests.data.conftest import FIXTURES, QWEN_SPECIALS, build_bpe_dir
  from jaxtrain.data.tokenizer import HFTokenizer
  directory = tmp_path_factory.mktemp("hf_model")
  build_bpe_dir(directory, QWEN_SPECIALS, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                           "chat_template": (FIXTURES / "qwen_chat_template.jinja").read_text()},
                vocab_size=400)
  tok = HFTokenizer(str(directory))
  model = build_hf("qwen3_moe", str(directory), seed=3, vocab_size=tok.vocab_size, hidden_size=32,
                   intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, rope_theta=10000.0)

  def greedy(ids, n):
    """transformers' greedy continuation of `ids`, cut where ours stops (eos / end of turn)."""
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=tok.pad_id)
    new = out[0, len(ids):].tolist()
    stop = tok.token_to_id("<|im_end|>")
    return new[:new.index(stop)] if stop in new else new

  return {"dir": str(directory), "tok": tok, "greedy": greedy}


def test_generate_on_an_hf_directory_matches_transformers(hf, capsys):
  tok = hf["tok"]
  code, out, err = _run(capsys, "generate", "--model", hf["dir"], "--prompt", PROMPT, "--prompt", "Thanks!",
                        "--temperature", "0", "--max-new-tokens", "6", "--jsonl")
  assert code == 0, err
  rows = [json.loads(line) for line in out.splitlines()]
  assert [r["prompt"] for r in rows] == [PROMPT, "Thanks!"]
  for row in rows:
    assert row["completion"] == tok.decode(hf["greedy"](tok.encode(row["prompt"]), 6), skip_special_tokens=True)


def test_chat_streams_the_reply_transformers_gives_and_resets(hf, capsys, monkeypatch):
  tok = hf["tok"]
  messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]
  expected = tok.decode(hf["greedy"](tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True)), 7),
                        skip_special_tokens=True)
  monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n/reset\n{PROMPT}\n"))
  # 7 tokens in chunks of 3: the reply is assembled from three continuations.
  code, out, err = _run(capsys, "chat", "--model", hf["dir"], "--system", "You are terse.", "--temperature", "0",
                        "--max-new-tokens", "7", "--stream-chunk", "3")
  assert code == 0, err
  assert out == f"{expected}\n{expected}\n"


# -- a jaxtrain workdir ----------------------------------------------------------------------------

def test_train_generate_and_eval_on_a_workdir(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  code, out, err = _run(capsys, "train", "--config", os.path.join(REPO, "tests/configs/tiny.py"),
                        f"--config.workdir={workdir}", "--config.train.steps=2", "--config.checkpoint.every=0",
                        "--config.sample.enabled=true", "--config.sample.temperature=0",
                        "--config.sample.max_new_tokens=8", "--config.sample.prompt=def ")
  assert code == 0, err
  sample = out.split("sample:\n", 1)[1].rstrip("\n")
  code, out, err = _run(capsys, "generate", "--model", workdir, "--prompt", "def ", "--temperature", "0",
                        "--max-new-tokens", "8")
  assert code == 0, err
  assert out.rstrip("\n") == sample  # the trainer's own sample, through another code path

  final = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  code, out, err = _run(capsys, "eval", "--model", workdir, "--json")
  assert code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  np.testing.assert_allclose(result["eval_loss"], final["eval_loss"], rtol=1e-6)
  np.testing.assert_allclose(result["perplexity"], np.exp(final["eval_loss"]), rtol=1e-6)
  assert result["eval_tokens"] > 0
  code, _, err = _run(capsys, "eval", "--model", str(tmp_path / "missing"))
  assert code == 1 and "missing" in err
