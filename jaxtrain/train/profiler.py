"""`train.profile_steps = (first, last)`: a jax.profiler trace of those train steps.

The trace lands in `workdir/tensorboard/plugins/profile/<time>/`: `<host>.xplane.pb` for
TensorBoard's profile tab (`pip install tensorboard-plugin-profile`; `tensorboard --logdir
WORKDIR`), and `perfetto_trace.json.gz` for https://ui.perfetto.dev. Every process traces its
own devices. Steps are counted from 1; the train step is compiled before the first step runs,
outside any trace.
"""

from __future__ import annotations

import glob
import logging
import os

import jax

log = logging.getLogger("jaxtrain")


class StepProfiler:

  def __init__(self, steps: tuple[int, ...], logdir: str):
    self.first, self.last = (tuple(steps) or (0, -1))
    self.logdir = logdir
    self.active = False

  def before(self, step: int) -> None:
    """Called before train step `step` (1-based) runs."""
    if step == self.first:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.active = True

  def after(self, step: int, outputs) -> None:
    """Called after train step `step` was dispatched, with its outputs."""
    if self.active and step >= self.last:
      jax.block_until_ready(outputs)  # the trace must hold the device work, not only its dispatch
      self.close()

  def close(self) -> None:
    if not self.active:
      return
    jax.profiler.stop_trace()
    self.active = False
    traces = sorted(glob.glob(os.path.join(self.logdir, "plugins", "profile", "*")), key=os.path.getmtime)
    log.info("profiled train steps %d-%d: %s (TensorBoard profile tab, or perfetto_trace.json.gz in "
             "ui.perfetto.dev)", self.first, self.last, traces[-1] if traces else self.logdir)
