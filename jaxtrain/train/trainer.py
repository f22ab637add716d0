"""`Trainer`: the programmatic entry point that runs a config end to end.

config -> mesh -> abstract model -> params born sharded (random, HF directory, or jaxtrain
checkpoint) -> optimizer state -> data iterators -> loop (train step, metrics, periodic
checkpoints, evaluation) -> final checkpoint, held-out loss and a generated sample. Re-running
on a workdir that holds a checkpoint resumes from it, data-iterator position included.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from ml_collections import ConfigDict

from jaxtrain import config as config_lib
from jaxtrain import data as data_lib
from jaxtrain.checkpoint import Checkpointer, abstract_with_shardings, checkpoint_dir, gather_process_states
from jaxtrain.converters import load_params
from jaxtrain.generate.sampler import generate, truncate_at_eos
from jaxtrain.models.config import ModelConfig
from jaxtrain.parallel import distributed, memory
from jaxtrain.parallel.mesh import make_mesh, mesh_context
from jaxtrain.parallel.rules import logical_to_spec
from jaxtrain.posttrain import methods, setup
from jaxtrain.train import flops as flops_lib
from jaxtrain.train import state as state_lib
from jaxtrain.train.memory_check import device_memory_metrics, memory_metrics, plan_run
from jaxtrain.train.metrics import MetricsWriter
from jaxtrain.train.optimizer import make_optimizer, schedule
from jaxtrain.train.profiler import StepProfiler
from jaxtrain.train.progress import Progress
from jaxtrain.train.run_config import load_config
from jaxtrain.train.freeze import with_freeze
from jaxtrain.train.sinks import TENSORBOARD_DIR
from jaxtrain.train.step import make_eval_step, make_train_step

log = logging.getLogger("jaxtrain")


class Preempted(Exception):
  """Raised inside the loop when SIGTERM/SIGINT arrived; the run saved a checkpoint."""


class Trainer:
  """Runs one training config. `Trainer(config).fit()` returns a summary dict."""

  def __init__(self, config: ConfigDict | str, overrides: list[str] | tuple[str, ...] = ()):
    if isinstance(config, str):
      config = load_config(config, overrides)
    elif overrides:
      config = load_config(base=config, overrides=overrides)
    distributed.initialize()  # multi-process launch from JAX_* env vars; no-op otherwise or if done
    # "auto" mesh / remat / micro-batches are the planner's; a config that cannot fit fails here.
    config, self.predicted = plan_run(config)
    self.config = config
    self.workdir = config.workdir
    self.model_cfg = ModelConfig.from_config(config.model, config.kernels)
    self.is_main = jax.process_index() == 0
    self.stop_signal: int | None = None
    # Mesh errors surface here, before anything is compiled or loaded.
    self.mesh = make_mesh(config.mesh, config=config)

  # -- setup ---------------------------------------------------------------------------------
  def _build(self, checkpoints: bool = True):
    cfg, mc = self.config, self.model_cfg
    self.tokenizer = data_lib.build_tokenizer(cfg.data)
    if self.tokenizer.vocab_size > mc.vocab_size:
      raise config_lib.ConfigError(
          f"config model.vocab_size={mc.vocab_size} is smaller than the tokenizer's vocabulary "
          f"({self.tokenizer.vocab_size} tokens, {cfg.data.tokenizer})")
    self.tx = with_freeze(make_optimizer(cfg.train), mc.freeze)
    self.lr_schedule = schedule(cfg.train)
    # What trains and what stays frozen (LoRA / QLoRA, a preference reference): posttrain/setup.py.
    self.objective = self._objective(cfg)
    self.plan = setup.plan(cfg, mc, self.mesh, self.objective)
    self.graphdef = self.plan.parts.graphdef
    abstract_params, abstract_model_state = self.plan.abstract_params, self.plan.abstract_model_state
    self.abstract_params = abstract_params
    self.params_sharding = self.plan.params_sharding
    self.model_state_sharding = state_lib.model_state_shardings(abstract_model_state, self.mesh)
    self.abstract_model_state = abstract_model_state if self.model_state_sharding is not None else None
    self.state_sharding = state_lib.state_shardings(self.tx, abstract_params, self.params_sharding, self.mesh,
                                                    self.model_state_sharding).replace(
                                                        frozen=self.plan.frozen_sharding)
    self.fields = self.objective.batch_fields(cfg)
    self.batch_sharding = {k: NamedSharding(self.mesh, logical_to_spec(f.axes, f.shape, self.mesh))
                           for k, f in self.fields.items()}
    distributed.check_batch_sharding(self.batch_sharding["input_ids"], self.fields["input_ids"].shape)
    if checkpoints:
      self.checkpointer = Checkpointer(checkpoint_dir(self.workdir), keep=cfg.checkpoint.keep,
                                       keep_every=cfg.checkpoint.keep_every, async_save=cfg.checkpoint.async_save)

  def _objective(self, cfg):
    """What the loop minimises (`train.method`; posttrain/methods.py)."""
    return methods.make(cfg)

  def _base_params(self):
    """(the model's own parameters, model state or None), from model.init_from or the seed."""
    path, sharding = self.config.model.init_from, self.plan.base_sharding
    if not path:
      return (state_lib.init_params(self.model_cfg, self.config.seed, sharding),
              state_lib.init_model_state(self.model_cfg, self.config.seed, self.model_state_sharding))
    log.info("initialising parameters from %s", path)
    return load_params(path, self.model_cfg, sharding, with_state=True, state_sharding=self.model_state_sharding)

  def _initial_params(self):
    """(trainable parameters, frozen parameters or None, model state or None)."""
    base, model_state = self._base_params()
    params, frozen = self.plan.split(base)
    if self.config.lora.init_from:
      params = self.plan.import_adapters(self.config.lora.init_from, self.model_cfg)
    return params, frozen, model_state

  def _restore_or_init(self):
    latest = self.checkpointer.latest_step()
    if latest is not None:
      log.info("resuming from %s step %d", self.checkpointer.directory, latest)
      saved_sharding = self.state_sharding.replace(frozen=None)
      abstract = abstract_with_shardings(
          jax.eval_shape(lambda: state_lib.init_state(self.abstract_params, self.tx, saved_sharding,
                                                      self.config.seed, self.abstract_model_state)),
          saved_sharding)
      state, data_state, _ = self.checkpointer.restore(latest, abstract)
      if self.plan.frozen_sharding is not None:  # frozen parameters are rebuilt, never saved
        state = state.replace(frozen=self.plan.frozen_only(self._base_params()[0]))
      return state, data_state
    params, frozen, model_state = self._initial_params()
    state = state_lib.init_state(params, self.tx, self.state_sharding.replace(frozen=None), self.config.seed,
                                 model_state)
    return state.replace(frozen=frozen), None

  def _device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding[k], np.asarray(batch[k], f.dtype))
            for k, f in self.fields.items()}

  # -- signals -------------------------------------------------------------------------------
  def _install_signal_handlers(self):
    def handler(signum, _frame):
      if self.stop_signal is None:
        log.warning("received %s: finishing the current step, then checkpointing and exiting",
                    signal.Signals(signum).name)
      self.stop_signal = signum

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        previous[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread
        pass
    return previous

  # -- the run -------------------------------------------------------------------------------
  def fit(self) -> dict[str, Any]:
    cfg = self.config
    os.makedirs(self.workdir, exist_ok=True)
    previous_handlers = self._install_signal_handlers()
    try:
      with mesh_context(self.mesh, expert_exchange=cfg.mesh.expert_exchange):
        return self._fit(cfg)
    finally:
      for sig, h in previous_handlers.items():
        signal.signal(sig, h)
      if hasattr(self, "checkpointer"):
        self.checkpointer.close()
      if hasattr(self, "metrics_writer"):
        self.metrics_writer.close()

  def _fit(self, cfg) -> dict[str, Any]:
    self._build()
    if self.is_main:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    state, data_state = self._restore_or_init()
    if self.predicted is None:  # no plan for this run (CPU, LoRA, DPO): the start-up estimate
      memory.log_report(state, self.model_cfg, cfg, self.mesh)
    start = int(state.step)
    n_params = state_lib.count_params(state.params)
    log.info("model: %s, %.2fM parameters, mesh %s", self.model_cfg.arch, n_params / 1e6, dict(self.mesh.shape))

    train_iter = self.objective.pipeline(cfg, "train", self.tokenizer, jax.process_index(), jax.process_count())
    if data_state is not None:
      self._restore_data_position(train_iter, data_state, start)
    self.metrics_writer = metrics_writer = MetricsWriter(
        self.workdir, enabled=self.is_main, resume_step=start if start else None, settings=cfg.logging, config=cfg)
    profiler = StepProfiler(cfg.train.profile_steps, os.path.join(self.workdir, TENSORBOARD_DIR))

    train_step = jax.jit(make_train_step(self.graphdef, self.model_cfg, cfg.train, self.tx, self.lr_schedule,
                                         objective=self.objective, parts=self.plan.parts, fields=self.fields),
                         in_shardings=(self.state_sharding, self.batch_sharding),
                         out_shardings=(self.state_sharding, None), donate_argnums=(0,))
    total = cfg.train.steps
    tokens_per_step = int(np.prod(self.fields["input_ids"].shape))
    flops_per_token = flops_lib.train_flops_per_token(self.model_cfg, cfg.data.seq_len)
    peak = flops_lib.device_peak(self.model_cfg.dtype)
    summary: dict[str, Any] = {"start_step": start, "params": n_params}
    compiled = None
    last_record: dict[str, Any] = {}
    progress = Progress(total, start, enabled=cfg.train.progress and self.is_main)
    interval_start, interval_steps = time.perf_counter(), 0
    step = start
    try:
      while step < total:
        batch = self._device_batch(next(train_iter))
        if compiled is None:
          t0 = time.perf_counter()
          compiled = train_step.lower(state, batch).compile()
          summary["compile_seconds"] = time.perf_counter() - t0
          log.info("compiled the train step in %.1fs", summary["compile_seconds"])
          memory_record = memory_metrics(self.predicted, compiled)
          interval_start = time.perf_counter()
        profiler.before(step + 1)
        state, metrics = compiled(state, batch)
        step += 1
        profiler.after(step, metrics)
        interval_steps += 1
        if step % cfg.train.log_every == 0 or step == total:
          metrics = jax.device_get(metrics)
          elapsed = time.perf_counter() - interval_start
          metrics["tokens_per_sec"] = tokens_per_step * interval_steps / max(elapsed, 1e-9)
          metrics["step_time"] = elapsed / interval_steps
          metrics["data/packing_efficiency"] = train_iter.stats()["packing_efficiency"]
          metrics["tflops_per_device"] = flops_per_token * metrics["tokens_per_sec"] / self.mesh.size / 1e12
          if peak:
            metrics["mfu"] = flops_lib.mfu(flops_per_token, metrics["tokens_per_sec"], self.mesh.size, peak)
          metrics.update(memory_record, **device_memory_metrics())
          last_record = metrics_writer.write(step, metrics)
          progress.update(step, last_record)
          interval_start, interval_steps = time.perf_counter(), 0
        else:
          progress.update(step)
        if cfg.checkpoint.enabled and cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total:
          self._save(step, state, train_iter)
        if cfg.eval.every and step % cfg.eval.every == 0 and step < total:
          eval_loss = self.evaluate(state.params, state.model_state, state.frozen)
          metrics_writer.write(step, {"eval_loss": eval_loss})
          progress.note(f"step {step}: held-out loss {eval_loss:.4f}")
        if self.stop_signal is not None:
          self._save(step, state, train_iter, force=True)
          self.checkpointer.wait()
          raise Preempted(step)
    finally:
      progress.close()
      profiler.close()

    summary.update(steps=step, train_loss=last_record.get("loss"),
                   tokens_per_sec=last_record.get("tokens_per_sec"))
    if cfg.checkpoint.enabled and step > start:
      self._save(step, state, train_iter, force=True)
    summary["data"] = train_iter.stats()
    if self.is_main:
      log.info("%s", train_iter.report())
    train_iter.close()
    summary["eval_loss"] = self.evaluate(state.params, state.model_state, state.frozen)
    metrics_writer.write(step, {"eval_loss": summary["eval_loss"]})
    if cfg.eval.unigram_baseline:
      summary["unigram_loss"] = data_lib.unigram_loss(cfg, self.tokenizer)
    if cfg.sample.enabled:
      summary["sample"] = self.sample(state.params, state.model_state, state.frozen)
    self.checkpointer.wait()
    self.state = state
    return summary

  def _save(self, step, state, train_iter, force=False):
    data_states = gather_process_states(train_iter.get_state())
    self.checkpointer.save(step, state.replace(frozen=None), data_state={"per_process": data_states},
                           config_json=config_lib.to_json(self.config), force=force)

  @staticmethod
  def _restore_data_position(train_iter, saved: Any, step: int) -> None:
    """Puts the data stream where the checkpointed run left it. Each process reads its own
    slice, so an exact restore needs the same process count; with another count the new
    stream skips as many batches as the run consumed (same number of examples seen)."""
    states = saved["per_process"]
    if len(states) == jax.process_count():
      train_iter.set_state(states[jax.process_index()])
      return
    log.warning("checkpoint was written by %d processes, this run has %d: model and optimizer state "
                "restore exactly; the data stream is re-split and fast-forwarded by %d batches",
                len(states), jax.process_count(), step)
    for _ in range(step):
      next(train_iter)

  # -- evaluation and sampling ---------------------------------------------------------------
  def evaluate(self, params, model_state=None, frozen=None) -> float:
    """The objective's loss on held-out data (SFT: nats per loss token)."""
    cfg = self.config
    if not hasattr(self, "_eval_step"):
      self._eval_step = jax.jit(make_eval_step(self.graphdef, cfg.train, objective=self.objective,
                                               parts=self.plan.parts, fields=self.fields),
                                in_shardings=(self.params_sharding, self.batch_sharding, self.model_state_sharding,
                                              self.plan.frozen_sharding))
    loss_sum, count = 0.0, 0.0
    with self.objective.pipeline(cfg, "eval", self.tokenizer, jax.process_index(), jax.process_count()) as it:
      # Every process runs exactly eval.batches steps (collectives must line up); a process
      # whose held-out slice ran out feeds empty batches, which add no tokens.
      for _ in range(cfg.eval.batches):
        batch = next(it, None)
        if batch is None:
          if jax.process_count() == 1:
            break
          batch = {k: np.zeros((f.shape[0] // jax.process_count(),) + f.shape[1:], f.dtype)
                   for k, f in self.fields.items()}
        s, c = self._eval_step(params, self._device_batch(batch), model_state, frozen)
        loss_sum, count = loss_sum + float(s), count + float(c)
    self.eval_tokens = int(count)
    return loss_sum / max(count, 1.0)

  def evaluate_pretrained(self) -> dict[str, float]:
    """Held-out loss of the parameters `model.init_from` names (random ones if it is empty),
    without training or writing anything: what `jaxtrain eval` reports."""
    with mesh_context(self.mesh, expert_exchange=self.config.mesh.expert_exchange):
      self._build(checkpoints=False)
      params, frozen, model_state = self._initial_params()
      loss = self.evaluate(params, model_state, frozen)
    return {"eval_loss": loss, "eval_tokens": self.eval_tokens}

  def sample(self, params, model_state=None, frozen=None) -> str:
    cfg = self.config.sample
    model = self.plan.parts.policy(params, frozen, model_state)
    prompt = self.tokenizer.encode(cfg.prompt)
    if self.tokenizer.bos_id is not None:
      prompt = [self.tokenizer.bos_id] + prompt
    out = generate(model, np.asarray([prompt]), max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, seed=self.config.seed, vocab_limit=self.tokenizer.vocab_size)
    new = truncate_at_eos(np.asarray(out[0, len(prompt):]).tolist(), self.tokenizer.eos_id)
    return cfg.prompt + self.tokenizer.decode(new)


def exit_code_for(signum: int) -> int:
  return 128 + int(signum)


__all__ = ["Trainer", "Preempted", "exit_code_for"]
