"""`GRPOTrainer`: GRPO-family RL (`train.method=grpo`) on the SFT Trainer's machinery (mesh,
parameters born sharded or loaded, optimizer, checkpoints, signals).

One rollout per `grpo.num_iterations` optimizer steps:
  prompts (rollout.PromptData) -> sampler (generate/, `num_generations` completions each, with
  the current weights) -> rewards (rewards.py, weighted sum, + DAPO overlong penalty) ->
  advantages (rl_loss) [-> DAPO dynamic sampling: groups with all-equal rewards are dropped and
  more prompts sampled, up to `max_rollout_rounds`] -> log-probabilities of the rollout policy
  (num_iterations > 1) and of the reference (beta > 0) -> optimizer steps.

What trains is the SFT plan (posttrain/setup.py): full parameters, or LoRA / QLoRA adapters over
the frozen (quantized) base; the sampler runs the same policy. The reference for the KL term is
the frozen part of the plan: under LoRA the base model over the same frozen arrays (adapters
disabled, no copy), under full fine-tuning a copy of the starting weights.

Checkpoints are the SFT format (TrainState, so export-hf works on a GRPO run) plus the prompt
iterator's position; the sampler's key is derived from the saved `TrainState.rng` and the step,
so a resumed run draws the same completions. Checkpoints fall between rollouts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from jaxtrain import config as config_lib
from jaxtrain.generate.sampler import Sampler, SamplingParams
from jaxtrain.parallel import memory
from jaxtrain.parallel.rules import logical_to_spec
from jaxtrain.posttrain import rl_loss
from jaxtrain.posttrain.objective import Objective
from jaxtrain.posttrain.rewards import load_rewards, score, soft_overlong_penalty
from jaxtrain.posttrain.rl_step import ROW_KEYS, make_grpo_step, make_logp_fn, make_ref_logp_fn
from jaxtrain.posttrain.rollout import PromptData, training_batch
from jaxtrain.train import state as state_lib
from jaxtrain.train.metrics import MetricsWriter
from jaxtrain.train.progress import Progress
from jaxtrain.train.trainer import Preempted, Trainer

log = logging.getLogger("jaxtrain")


class RolloutObjective(Objective):
  """GRPO builds its own rows and loss (posttrain/rl_step.py); its objective only tells the plan
  whether to keep a frozen reference (the KL term, grpo.beta > 0)."""

  def needs_reference(self) -> bool:
    return self.config.grpo.beta > 0


class GRPOTrainer(Trainer):
  """Runs a `train.method=grpo` config. `GRPOTrainer(config).fit()` returns a summary dict."""

  def _objective(self, cfg):
    return RolloutObjective(cfg)

  def _fit(self, cfg) -> dict[str, Any]:
    g = cfg.grpo
    if jax.process_count() > 1:
      raise config_lib.ConfigError("config train.method=grpo: one process only for now (any number of its "
                                   "devices); multi-host rollouts are not implemented")
    self._build()
    self.rewards = load_rewards(g.rewards)  # import errors before anything compiles
    if self.is_main:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    state, data_state = self._restore_or_init()
    rows, T = g.prompts_per_step * g.num_generations, g.max_prompt_tokens + g.max_new_tokens - 1
    shape = ConfigDict(cfg.to_dict())  # the memory report at the rollout batch's shape
    shape.train.global_batch, shape.data.seq_len = rows, T
    memory.log_report(state, self.model_cfg, shape, self.mesh)
    start = step = int(state.step)
    self.prompts = PromptData(cfg, self.tokenizer)
    if data_state is not None:
      self.prompts.set_state(data_state["per_process"][0])
    self.sampler = Sampler(self.graphdef, tokenizer=self.tokenizer, decode_chunk=g.decode_chunk)
    self.sampling = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                                  top_p=g.top_p, n=g.num_generations, stop=tuple(g.stop))
    row_sharding = NamedSharding(self.mesh, logical_to_spec(("act_batch", "act_seq"), (rows, T), self.mesh))
    self.rl_sharding = {**{k: row_sharding for k in ROW_KEYS},
                        "advantages": NamedSharding(self.mesh, logical_to_spec(("act_batch",), (rows,), self.mesh))}
    parts = self.plan.parts
    step_fn = jax.jit(make_grpo_step(parts, self.model_cfg, cfg.train, g, self.tx, self.lr_schedule),
                      in_shardings=(self.state_sharding, self.rl_sharding), out_shardings=(self.state_sharding, None),
                      donate_argnums=(0,))
    self.logp_fn = jax.jit(make_logp_fn(parts, cfg.train, g))
    self.ref_logp_fn = jax.jit(make_ref_logp_fn(parts, cfg.train, g)) if g.beta else None
    writer = MetricsWriter(self.workdir, enabled=self.is_main, resume_step=start if start else None)
    progress = Progress(cfg.train.steps, start, enabled=cfg.train.progress and self.is_main)
    summary: dict[str, Any] = {"start_step": start, "params": state_lib.count_params(state.params)}
    rewards_logged: list[float] = []
    record: dict[str, Any] = {}
    try:
      while step < cfg.train.steps:
        rollout = self._rollout(state, step)
        if rollout is None:
          log.info("data.epochs=%d passes over the prompts done at step %d", cfg.data.epochs, step)
          break
        batch, stats = rollout
        t0 = time.perf_counter()
        for _ in range(min(g.num_iterations, cfg.train.steps - step)):
          state, metrics = step_fn(state, batch)
          step += 1
          if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            metrics = jax.device_get(metrics)
            record = writer.write(step, {**metrics, **stats, "time/train": time.perf_counter() - t0})
            progress.update(step, record)
          else:
            progress.update(step)
        rewards_logged.append(stats["reward"])
        if cfg.checkpoint.enabled and cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and \
            step < cfg.train.steps:
          self._save(step, state, self.prompts)
        if self.stop_signal is not None:
          self._save(step, state, self.prompts, force=True)
          self.checkpointer.wait()
          raise Preempted(step)
    finally:
      progress.close()
    if cfg.checkpoint.enabled and step > start:
      self._save(step, state, self.prompts, force=True)
    self.checkpointer.wait()
    summary.update(steps=step, train_loss=record.get("loss"), tokens_per_sec=record.get("rollout/tokens_per_sec"),
                   reward=record.get("reward"), rewards=rewards_logged, sample=getattr(self, "last_sample", None))
    self.state = state
    return summary

  # -- one rollout -------------------------------------------------------------------------
  def _rollout(self, state, step: int):
    """(device batch, host metrics) for the next optimizer steps; None when prompts run out."""
    g = self.config.grpo
    G, K = g.num_generations, g.prompts_per_step
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), step)
    states = self.plan.parts.policy_states(state.params, state.frozen, state.model_state)
    kept, dropped, all_rewards = [], [], []
    t_sample = t_reward = 0.0
    tokens = 0
    rounds = 0
    while rounds < (g.max_rollout_rounds if g.dynamic_sampling else 1) and len(kept) < K:
      prompts = self.prompts.next_batch(K)
      if prompts is None:
        return None
      t0 = time.perf_counter()
      out = self.sampler.generate([p.ids for p in prompts], self.sampling, rng=jax.random.fold_in(key, rounds),
                                  state=states)
      t_sample += time.perf_counter() - t0
      tokens += out.stats["tokens"]
      t0 = time.perf_counter()
      table = self._score(prompts, out.completions)  # [N, F]
      t_reward += time.perf_counter() - t0
      all_rewards.append(table)
      total = self._total(table)
      _, zero_std = rl_loss.group_advantages(total, G, "group")
      for k in range(K):
        group = (prompts[k], out.completions[k * G:(k + 1) * G], table[k * G:(k + 1) * G])
        (dropped if g.dynamic_sampling and zero_std[k * G] else kept).append(group)
      rounds += 1
    groups = (kept + dropped)[:K]
    live = np.repeat([i < len(kept) for i in range(K)], G)
    table = np.concatenate([t for _, _, t in groups])
    advantages, zero_std = rl_loss.group_advantages(self._total(table), G, g.scale_rewards)
    completions = [c for _, cs, _ in groups for c in cs]
    prompt_ids = [p.ids for p, cs, _ in groups for _ in cs]
    rows = training_batch(prompt_ids, [c.token_ids for c in completions], g.max_prompt_tokens, g.max_new_tokens,
                          self.tokenizer.pad_id)
    truncated = np.asarray([c.finish_reason == "length" for c in completions])
    keep = live & ~(truncated if g.mask_truncated else False)
    rows["mask"] = rows["mask"] * keep[:, None].astype(np.int32)
    rows["advantages"] = advantages
    batch = {k: jax.device_put(np.asarray(v), self.rl_sharding[k]) for k, v in rows.items()
             if k in self.rl_sharding}
    t0 = time.perf_counter()
    zeros = jnp.zeros_like(batch["mask"], jnp.float32)
    batch["old_logps"] = batch["ref_logps"] = jax.device_put(zeros, self.rl_sharding["old_logps"])
    if g.num_iterations > 1:
      batch["old_logps"] = self.logp_fn(state.params, state.frozen, state.model_state, batch)
    if g.beta:
      batch["ref_logps"] = self.ref_logp_fn(state.frozen, state.model_state, batch)
    t_logps = time.perf_counter() - t0
    self._log_completions(step, groups)
    sampled = np.concatenate(all_rewards)
    lengths = np.asarray([len(c.token_ids) for c in completions])
    stats = {"reward": float(np.nanmean(self._total(sampled))), "reward_std": float(np.nanstd(self._total(sampled))),
             **{f"rewards/{name}/mean": float(np.nanmean(sampled[:, i])) for i, name in enumerate(self._names())},
             **{f"rewards/{name}/std": float(np.nanstd(sampled[:, i])) for i, name in enumerate(self._names())},
             "frac_reward_zero_std": float(np.mean(zero_std)), "completion/mean_length": float(lengths.mean()),
             "completion/min_length": int(lengths.min()), "completion/max_length": int(lengths.max()),
             "completion/truncated_frac": float(truncated.mean()), "rollout/tokens": tokens,
             "rollout/tokens_per_sec": tokens / max(t_sample, 1e-9), "time/sampling": t_sample,
             "time/rewards": t_reward, "time/logps": t_logps}
    if g.dynamic_sampling:
      stats.update({"dynamic/rounds": rounds, "dynamic/kept_groups": min(len(kept), K)})
    c = completions[0]
    self.last_sample = f"{groups[0][0].prompt!s} -> {c.text!r}"
    return batch, stats

  def _names(self) -> list[str]:
    g = self.config.grpo
    return [r.name for r in self.rewards] + (["overlong"] if g.overlong_buffer else [])

  def _score(self, prompts, completions) -> np.ndarray:
    g = self.config.grpo
    G = g.num_generations
    columns = {k: [p.columns.get(k) for p in prompts for _ in range(G)] for k in
               sorted({k for p in prompts for k in p.columns})}
    table = score(self.rewards, [p.prompt for p in prompts for _ in range(G)], [c.text for c in completions],
                  [c.token_ids for c in completions], columns)
    if g.overlong_buffer:
      table.append(soft_overlong_penalty([len(c.token_ids) for c in completions], g.max_new_tokens,
                                         g.overlong_buffer, g.overlong_penalty))
    return np.asarray(table, np.float64).T

  def _total(self, table: np.ndarray) -> np.ndarray:
    """Weighted sum over reward functions (NaN where every function returned None)."""
    weights = np.asarray([r.weight for r in self.rewards] + ([1.0] if self.config.grpo.overlong_buffer else []))
    total = np.nansum(table * weights, axis=1)
    return np.where(np.isnan(table).all(axis=1), np.nan, total)

  def _log_completions(self, step: int, groups) -> None:
    n = self.config.grpo.log_completions
    if not n or not self.is_main:
      return
    with open(os.path.join(self.workdir, "completions.jsonl"), "a") as f:
      for prompt, completions, table in groups[:n]:
        c = completions[0]
        f.write(json.dumps({"step": step + 1, "prompt": prompt.prompt, "completion": c.text,
                            "finish_reason": c.finish_reason,
                            "rewards": dict(zip(self._names(), map(float, table[0])))}, default=str) + "\n")
