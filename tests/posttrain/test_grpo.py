"""GRPO end to end: training rows reproduce the sampler's log-probabilities exactly (positions,
padding, temperature), and a run through the API and the CLI (multiple policy updates per
rollout, KL to the reference, dynamic sampling, overlong penalty) resumes bit-identically,
sampler draws included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

import jaxtrain
from jaxtrain.config import ConfigError
from jaxtrain.generate.sampler import Sampler, SamplingParams
from jaxtrain.models.decoder import Decoder
from jaxtrain.posttrain.parts import ModelParts
from jaxtrain.posttrain.rl_step import make_logp_fn
from jaxtrain.posttrain.rollout import training_batch
from tests.helpers import REPO, tiny_moe, xla_flags

CONFIG = os.path.join(REPO, "configs", "grpo_tiny.py")


def test_training_rows_reproduce_the_sampler_logprobs():
  model = Decoder(tiny_moe(sliding_window=3, layer_types=("sliding_attention", "full_attention")), rngs=nnx.Rngs(0))
  prompts = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6]]
  T = 0.7
  out = Sampler(model, eos_ids=(3,), decode_chunk=4).generate(
      prompts, SamplingParams(max_new_tokens=6, temperature=T, n=2), seed=1)
  comps = out.completions
  rows = training_batch([prompts[c.prompt_index] for c in comps], [c.token_ids for c in comps], 8, 6, 0)
  graphdef, params = nnx.split(model, nnx.Param)
  logp_fn = jax.jit(make_logp_fn(ModelParts(graphdef), ConfigDict({"loss_vocab_chunk": 16}), ConfigDict({"temperature": T})))
  logps = np.asarray(logp_fn(params, None, None, {k: np.asarray(v) for k, v in rows.items()}))
  for r, c in enumerate(comps):
    got = logps[r][rows["mask"][r] == 1]
    assert len(got) == len(c.token_ids)
    np.testing.assert_allclose(got, c.logprobs, atol=2e-5)


OVERRIDES = ["--config.train.steps=4", "--config.checkpoint.every=2", "--config.train.log_every=1",
             "--config.train.progress=false", "--config.grpo.prompts_per_step=2", "--config.grpo.num_generations=4",
             "--config.grpo.num_iterations=2", "--config.grpo.beta=0.04", "--config.grpo.dynamic_sampling=true",
             "--config.grpo.max_rollout_rounds=2", "--config.grpo.overlong_buffer=2", "--config.model.num_layers=1",
             "--config.train.warmup_steps=0"]  # the schedule must not depend on train.steps


def _metrics(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    out[r["step"]] = {k: v for k, v in r.items() if not k.startswith("time/") and "per_sec" not in k}
  return out


def _params(workdir):
  return jax.tree.leaves(nnx.state(jaxtrain.from_pretrained(workdir), nnx.Param))


@pytest.mark.slow
def test_grpo_runs_through_api_and_cli_and_resumes_exactly(tmp_path):
  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  summary = jaxtrain.Trainer(CONFIG, OVERRIDES + [f"--config.workdir={full}"]).fit()
  assert summary["steps"] == 4 and len(summary["rewards"]) == 2
  jaxtrain.Trainer(CONFIG, OVERRIDES + [f"--config.workdir={part}", "--config.train.steps=2"]).fit()
  proc = subprocess.run([sys.executable, "-m", "jaxtrain.main", "--config", CONFIG, *OVERRIDES,
                         f"--config.workdir={part}"], capture_output=True, text=True, cwd=REPO, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from" in proc.stderr and "mean reward:" in proc.stdout
  a, b = _metrics(full), _metrics(part)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  assert a == b
  record = a[4]
  for key in ("reward", "reward_std", "rewards/correct/mean", "rewards/starts_with_digit/std", "rewards/overlong/mean",
              "kl", "clip/region", "completion/mean_length", "rollout/tokens", "dynamic/kept_groups", "loss"):
    assert key in record, key
  assert record["kl"] > 0  # the policy moved away from the reference
  for r in a.values():  # dynamic sampling: groups with all-equal rewards only fill what is missing
    assert r["frac_reward_zero_std"] <= 1 - r["dynamic/kept_groups"] / 2 + 1e-9, r
  for x, y in zip(_params(full), _params(part)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  lines = [json.loads(s) for s in open(os.path.join(full, "completions.jsonl"))]
  assert lines and {"prompt", "completion", "rewards"} <= set(lines[0])


def test_bad_reward_fails_before_compiling_with_its_name(tmp_path):
  trainer = jaxtrain.Trainer(CONFIG, [f"--config.workdir={tmp_path}",
                                      "--config.grpo.rewards.correct.function=my_missing_module:score"])
  with pytest.raises(ConfigError, match=r"grpo.rewards.correct.function.*'my_missing_module:score'"):
    trainer.fit()


def test_micro_batches_give_the_same_update():
  """The loss aggregation (here GRPO's per-sequence mean) is computed over the whole rollout
  batch, so accumulating over micro-batches gives the same loss, metrics and gradient (SGD
  with lr 1: the update is the gradient)."""
  import optax
  from jaxtrain.models import factory
  from jaxtrain.posttrain.grpo_config import defaults as grpo_defaults
  from jaxtrain.posttrain.rl_step import make_grpo_step
  from jaxtrain.train import state as state_lib
  from jaxtrain.train.config import defaults as train_defaults
  from jaxtrain.train.optimizer import schedule
  cfg = tiny_moe(num_layers=1, aux_loss_weight=0.0, z_loss_weight=0.0)  # router losses are per micro-batch
  g = grpo_defaults()
  g.update(loss_type="grpo", num_iterations=2, beta=0.1, max_new_tokens=5, epsilon_high=0.28)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 64, n).tolist() for n in (3, 5, 2, 6)]
  comps = [rng.integers(1, 64, n).tolist() for n in (5, 1, 4, 2)]
  rows = training_batch(prompts, comps, 6, 5, 0)
  rows.update(advantages=np.asarray([1.0, -0.5, 0.3, -1.2], np.float32),
              old_logps=rng.normal(-4, 0.3, rows["mask"].shape).astype(np.float32),
              ref_logps=rng.normal(-4, 0.3, rows["mask"].shape).astype(np.float32))
  results = []
  for micro in (1, 2):
    tc = train_defaults()
    tc.update(micro_batches=micro, warmup_steps=0)
    tx = optax.sgd(1.0)
    graphdef, abstract, _ = factory.abstract_model(cfg)
    state = state_lib.init_state(state_lib.init_params(cfg, 0, None), tx, None, 0)
    new, metrics = jax.jit(make_grpo_step(ModelParts(graphdef), cfg, tc, g, tx, schedule(tc)))(state, rows)
    results.append((jax.device_get(metrics), jax.tree.leaves(new.params)))
  (m1, p1), (m2, p2) = results
  for key in ("loss", "grad_norm", "kl", "clip/region"):
    np.testing.assert_allclose(m2[key], m1[key], rtol=2e-5, atol=1e-7, err_msg=key)
  assert m1["kl"] > 0 and m1["clip/region"] > 0
  for a, b in zip(p1, p2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_grpo_trains_qlora_adapters_and_samples_with_them(tmp_path):
  """GRPO on the LoRA plan (here QLoRA: NF4 base): only the adapters move, the base stays as
  loaded, the KL reference is the base with adapters disabled (zero at the first step, where
  fresh adapters add nothing), and the sampler draws from the adapted policy: the training
  rows reproduce its log-probabilities, which differ from the reference's."""
  from jaxtrain.posttrain.rl_step import make_ref_logp_fn
  trainer = jaxtrain.Trainer(CONFIG, [f"--config.workdir={tmp_path}", "--config.train.steps=2",
                                      "--config.train.log_every=1", "--config.train.progress=false",
                                      "--config.grpo.prompts_per_step=2", "--config.grpo.num_generations=4",
                                      "--config.grpo.beta=0.04", "--config.model.num_layers=1",
                                      "--config.train.warmup_steps=0", "--config.lora.rank=4",
                                      "--config.lora.quantize=nf4", "--config.lora.quant_block=16",
                                      "--config.checkpoint.enabled=false"])
  summary = trainer.fit()
  assert summary["steps"] == 2
  metrics = _metrics(str(tmp_path))
  assert metrics[1]["kl"] == 0.0 and metrics[2]["kl"] > 0
  state = trainer.state
  _, frozen, _ = trainer._initial_params()
  for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert summary["params"] < sum(int(np.size(x)) for x in jax.tree.leaves(frozen)) / 4  # adapters only

  parts, g = trainer.plan.parts, trainer.config.grpo
  prompts = [[5, 9, 2], [7, 1]]
  out = Sampler(parts.graphdef, decode_chunk=4).generate(
      prompts, SamplingParams(max_new_tokens=4, temperature=g.temperature, n=2), seed=3,
      state=parts.policy_states(state.params, state.frozen, state.model_state))
  comps = out.completions
  rows = {k: np.asarray(v) for k, v in training_batch([prompts[c.prompt_index] for c in comps],
                                                      [c.token_ids for c in comps], 4, 4, 0).items()}
  logps = np.asarray(jax.jit(make_logp_fn(parts, trainer.config.train, g))(state.params, state.frozen,
                                                                          state.model_state, rows))
  ref = np.asarray(jax.jit(make_ref_logp_fn(parts, trainer.config.train, g))(state.frozen, state.model_state, rows))
  mask = rows["mask"] == 1
  for r, c in enumerate(comps):
    np.testing.assert_allclose(logps[r][mask[r]], c.logprobs, atol=2e-5)
  assert np.abs(logps - ref)[mask].max() > 1e-4
