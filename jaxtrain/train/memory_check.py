"""The run's memory, predicted and measured: the planner resolves "auto" (or checks that a fully
specified config fits) before the mesh is built, and the step's measured peak goes into
`metrics.jsonl` next to the prediction:

- `memory/predicted_bytes`: the planner's per-device peak for the run's candidate;
- `memory/xla_peak_bytes`: XLA's buffer assignment of the compiled train step
  (`compiled.memory_analysis()`: arguments + outputs - aliased + temporaries);
- `memory/device_peak_bytes`: the device's own high-water mark, where the backend reports one
  (GPU/TPU; not the CPU).
"""

from __future__ import annotations

import dataclasses
import logging

import jax

from jaxtrain.config import ConfigError
from jaxtrain.plan import check_fits, has_auto, resolve_auto
from jaxtrain.plan.hardware import GiB, local_device
from jaxtrain.plan.memory import Memory, format_memory
from jaxtrain.train.compiled import device_peak_bytes, step_memory

log = logging.getLogger("jaxtrain")


def plan_run(config):
  """(config with every "auto" resolved, the predicted memory or None)."""
  devices = jax.device_count()
  device = local_device(devices)
  if config.train.device_memory_gib:
    device = dataclasses.replace(device, memory=config.train.device_memory_gib * GiB)
  modeled = config.train.method == "sft" and not config.lora.rank  # full-parameter training
  if has_auto(config):
    if not modeled:
      raise ConfigError(f"'auto' (mesh, model.remat, train.micro_batches) plans full-parameter training only; "
                        f"train.method={config.train.method!r} with lora.rank={config.lora.rank} needs them set")
    config, plan = resolve_auto(config, devices, device)
    predicted = plan.best.memory
  elif config.train.check_memory and modeled and (device.platform != "cpu" or config.train.device_memory_gib):
    # CPU "devices" share the host's memory, which the OS pages: the check (one compile of a
    # layer) is for accelerators, or for a CPU run given a budget.
    predicted = check_fits(config, devices, device)
  else:
    return config, None
  if jax.process_index() == 0:
    log.info("memory per device, predicted: %s", format_memory(predicted))
  return config, predicted


def memory_metrics(predicted: Memory | None, compiled) -> dict:
  out = {}
  if predicted is not None:
    out["memory/predicted_bytes"] = predicted.total
  measured = step_memory(compiled)
  if measured is not None:
    out["memory/xla_peak_bytes"] = measured.peak
    if predicted is not None and jax.process_index() == 0:
      log.info("train step memory per device: XLA %.1f MiB, predicted %.1f MiB (%+.1f%%)", measured.peak / 2**20,
               predicted.total / 2**20, 100 * (predicted.total / max(measured.peak, 1) - 1))
  return out


def device_memory_metrics() -> dict:
  peak = device_peak_bytes()
  return {} if peak is None else {"memory/device_peak_bytes": peak}


__all__ = ["device_memory_metrics", "memory_metrics", "plan_run"]
