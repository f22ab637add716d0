"""What the planner knows about a device kind: memory, peak FLOP/s (train/flops.py's table),
interconnect bandwidths inside and between nodes, host-offload support, and how much of the
peak a training step reaches.

Bandwidths are per device and per direction, in bytes/s, as the vendors state them: NVLink
for devices of one node (H100/H200 SXM: 450 GB/s; the export-restricted H800/A800: 200 GB/s),
the network between nodes (one 400 Gb/s InfiniBand NIC per GPU = 50 GB/s; 200 Gb/s on A100
systems). Collectives reach a fraction of that (`COLLECTIVE_EFFICIENCY`), and matmuls a
fraction of the peak FLOP/s (`Device.achievable`): assumptions, stated here once, that the
GPU check (experiments/gpu_check.sh) is there to measure.
"""

from __future__ import annotations

import dataclasses
import functools
import time

from jaxtrain.train import flops as flops_lib

GB = 1e9
GiB = 2 ** 30
CPU_ACHIEVABLE = 0.27  # of the sustained matmul rate a CPU train step reaches (measured; see cpu_device)
COLLECTIVE_EFFICIENCY = 0.7  # bus bandwidth reached by large all-gathers / all-to-alls (NCCL-like)


@dataclasses.dataclass(frozen=True)
class Device:
  kind: str  # matched against jax's device_kind and train/flops.py's PEAK_FLOPS
  platform: str  # "gpu", "tpu" or "cpu": decides which kernels "auto" picks
  memory: float  # bytes of device memory a program may use
  intra_bw: float  # bytes/s per device per direction between devices of one node
  inter_bw: float  # bytes/s per device per direction between nodes
  per_node: int  # devices per node (the intra-node domain)
  offload: bool  # activations can be offloaded to host memory (a separate, larger memory)
  host_bw: float = 25 * GB  # device <-> host bytes/s (PCIe 5 x16 ~ 50 GB/s; half of it is realistic)
  achievable: float = 0.55  # fraction of the dense peak a well-tuned train step's matmuls reach
  peak_override: float | None = None  # FLOP/s when the kind is not in PEAK_FLOPS
  share: int = 1  # devices sharing one host's cores (simulated CPU devices)

  def peak_flops(self, dtype: str) -> float | None:
    if self.peak_override:
      return self.peak_override
    if self.platform == "cpu":  # measured on first use (it compiles a matmul)
      return cpu_matmul_flops() / self.share
    return flops_lib.peak_flops(self.kind, dtype) or flops_lib.peak_flops(self.kind, "bfloat16")


MiB = 2 ** 20
# Memory as the driver reports it (nvidia-smi's total: an "80GB" H100 has 81,559 MiB); a
# process gets `bytes_limit` of it (jax: XLA_PYTHON_CLIENT_MEM_FRACTION), which `local_device`
# reads on a live device.
DEVICES = {
    "H100": Device("H100", "gpu", 81559 * MiB, 450 * GB, 50 * GB, 8, True),
    "H200": Device("H200", "gpu", 143771 * MiB, 450 * GB, 50 * GB, 8, True),
    "H800": Device("H800", "gpu", 81559 * MiB, 200 * GB, 50 * GB, 8, True),
    "H20": Device("H20", "gpu", 97871 * MiB, 450 * GB, 50 * GB, 8, True, peak_override=148e12),
    "A100": Device("A100", "gpu", 81920 * MiB, 300 * GB, 25 * GB, 8, True),
    "A800": Device("A800", "gpu", 81920 * MiB, 200 * GB, 25 * GB, 8, True),
    "B200": Device("B200", "gpu", 183359 * MiB, 900 * GB, 100 * GB, 8, True),
    "L40S": Device("L40S", "gpu", 46068 * MiB, 32 * GB, 25 * GB, 8, True),
    "TPU v5p": Device("TPU v5p", "tpu", 95 * GiB, 90 * GB, 90 * GB, 4096, True),
    "TPU v5e": Device("TPU v5e", "tpu", 16 * GiB, 50 * GB, 50 * GB, 256, True),
}


@functools.lru_cache(maxsize=None)
def cpu_matmul_flops() -> float:
  """Sustained FLOP/s of a float32 matmul on this host (what a CPU "device" computes with;
  measured once, about a second of back-to-back matmuls: the best short burst overstated it by
  up to 3.5x on a shared host). Simulated CPU devices share the same cores, so each gets this
  divided by their number."""
  import jax
  import jax.numpy as jnp
  n = 512
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  count, t0 = 0, time.perf_counter()
  while True:
    for _ in range(8):
      out = f(a)
    out.block_until_ready()
    count += 8
    elapsed = time.perf_counter() - t0
    if elapsed > 1.0:
      return 2 * n ** 3 * count / elapsed


def cpu_device(memory: float | None = None, devices: int = 1) -> Device:
  """The host CPU as devices (tests, validation): each simulated device shares the host's cores and
  memory; no separate host memory to offload to."""
  import os
  mem = memory
  if mem is None:
    try:
      mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / devices
    except (ValueError, OSError):
      mem = 16 * GiB
  # A CPU train step spends most of its time outside matmuls (elementwise work, zero-fills, scan
  # slicing): dense steps reached 0.25-0.29 of the sustained matmul rate
  # (experiments/validate_step_time.py, experiments/RESULTS.md).
  return Device("cpu", "cpu", mem, 10 * GB, 10 * GB, devices, False, achievable=CPU_ACHIEVABLE, share=devices)


def lookup(kind: str, memory_gib: float | None = None, devices: int = 1) -> Device:
  """The device for a kind name ("H100", "h100-80gb", "NVIDIA H100 80GB HBM3", "cpu"); a
  `memory_gib` given overrides the table's memory."""
  if kind.lower() == "cpu":
    return cpu_device(None if memory_gib is None else memory_gib * GiB, devices)
  for name in sorted(DEVICES, key=len, reverse=True):
    if name.lower() in kind.lower():
      device = DEVICES[name]
      if memory_gib is not None:
        device = dataclasses.replace(device, memory=memory_gib * GiB)
      return device
  known = ", ".join(list(DEVICES) + ["cpu"])
  raise ValueError(f"unknown device kind {kind!r}; known: {known} (or pass --device-memory and one of them)")


def local_device(devices: int) -> Device:
  """The device this process runs on (for `auto` in a real run)."""
  import jax
  d = jax.local_devices()[0]
  if d.platform == "cpu":
    return cpu_device(devices=devices)
  device = lookup(d.device_kind)
  stats = d.memory_stats() or {}
  limit = stats.get("bytes_limit")
  return dataclasses.replace(device, memory=float(limit)) if limit else device
