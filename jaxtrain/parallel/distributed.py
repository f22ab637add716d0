"""Multi-host runs on JAX's multi-controller runtime.

Every process runs the same program. `initialize` joins the processes together
(`jax.distributed.initialize`) before JAX touches a device; afterwards `jax.devices()` lists
the devices of all processes, the mesh spans them, each process feeds only its slice of every
batch (`jax.make_array_from_process_local_data`), and collectives cross process boundaries
(NCCL on GPU, the TPU interconnect, gloo TCP collectives on CPU).

Where the settings come from, first found wins:
- arguments (the CLI's --coordinator / --num-processes / --process-id);
- JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID
  (optionally JAX_LOCAL_DEVICE_IDS, comma separated); without JAX_PROCESS_ID, a Kubernetes
  Indexed Job's (or JobSet's) JOB_COMPLETION_INDEX is the process id;
- a cluster JAX detects itself (SLURM with more than one task, Open MPI with more than one
  rank): `jax.distributed.initialize()` without arguments.
With none of these (or one process) nothing happens: a single-process run.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger("jaxtrain.parallel")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "JAX_LOCAL_DEVICE_IDS"
ENV_K8S_INDEX = "JOB_COMPLETION_INDEX"  # set in every pod of a Kubernetes Indexed Job (and JobSet)


def is_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  if fn is not None:
    return bool(fn())
  from jax._src import distributed as _d  # older JAX
  return _d.global_state.client is not None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_detected() -> bool:
  """Launchers JAX's own cluster detection understands, with more than one process."""
  if os.environ.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) > 1:
    return True
  return (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None) -> dict | None:
  """The resolved (coordinator_address, num_processes, process_id), {} for cluster
  auto-detection, or None for a single-process run. Incomplete settings are an error."""
  address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  count = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if pid is None and (address is not None or count is not None):
    pid = _env_int(ENV_K8S_INDEX)
  if address is None and count is None and pid is None:
    return {} if _cluster_detected() else None
  if count is not None and count <= 1 and pid in (None, 0):
    return None
  missing = [name for name, value in (("coordinator address (--coordinator / JAX_COORDINATOR_ADDRESS)", address),
                                      ("process count (--num-processes / JAX_NUM_PROCESSES)", count),
                                      ("process id (--process-id / JAX_PROCESS_ID / JOB_COMPLETION_INDEX)", pid))
             if value is None]
  if missing:
    raise ValueError(f"a multi-process launch needs all three settings; missing: {', '.join(missing)}")
  if not 0 <= pid < count:
    raise ValueError(f"process id {pid} is not in [0, {count}) for {count} processes")
  return {"coordinator_address": address, "num_processes": count, "process_id": pid}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None) -> bool:
  """Joins the multi-controller runtime when launched as several processes (see the module
  docstring for where the settings come from). Idempotent. Returns whether this is a
  multi-process run. Must run before anything else asks JAX for devices."""
  if is_initialized():
    return True
  kwargs = settings(coordinator_address, num_processes, process_id)
  if kwargs is None:
    return False
  if local_device_ids is None and os.environ.get(ENV_LOCAL_DEVICES):
    local_device_ids = [int(i) for i in os.environ[ENV_LOCAL_DEVICES].split(",")]
  if local_device_ids is not None:
    kwargs["local_device_ids"] = local_device_ids
  try:  # cross-process collectives of the CPU backend (GPU/TPU backends ignore this)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # option renamed or gone: the default works then
    pass
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    raise RuntimeError(f"jax.distributed.initialize({kwargs}) failed: {e}. It must run before any JAX "
                       "computation or device query (call jaxtrain.parallel.distributed.initialize() first "
                       "thing, or launch with python -m jaxtrain.main --num-processes ...)") from e
  log.info("process %d of %d joined via %s: %d local / %d global devices", jax.process_index(),
           jax.process_count(), kwargs.get("coordinator_address", "cluster auto-detection"),
           jax.local_device_count(), jax.device_count())
  return True


def process_rows(sharding, shape) -> tuple[int, int]:
  """The rows [start, stop) of a `shape` array that this process's devices hold under
  `sharding`; each must also hold whole rows (every column). Raises if they are not one
  contiguous block of whole rows (then a process could not feed its slice as-is)."""
  indices = sharding.addressable_devices_indices_map(tuple(shape)).values()
  rows = set()
  for index in indices:
    r = index[0]
    start, stop, _ = r.indices(shape[0])
    rows.update(range(start, stop))
    for dim, s in enumerate(index[1:], start=1):
      lo, hi, _ = s.indices(shape[dim])
      if (lo, hi) != (0, shape[dim]):
        cover = _columns_covered(sharding, shape, dim)
        if cover != shape[dim]:
          raise ValueError(f"the batch sharding {sharding.spec} splits dimension {dim} across processes: "
                           f"process {jax.process_index()} holds {cover} of {shape[dim]} columns, but each "
                           "process loads whole rows. Keep mesh.sequence/tensor within a process.")
  lo, hi = min(rows), max(rows) + 1
  if len(rows) != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows under {sharding.spec}")
  return lo, hi


def _columns_covered(sharding, shape, dim) -> int:
  cols = set()
  for index in sharding.addressable_devices_indices_map(tuple(shape)).values():
    lo, hi, _ = index[dim].indices(shape[dim])
    cols.update(range(lo, hi))
  return len(cols)


def check_batch_sharding(sharding, shape) -> tuple[int, int]:
  """Checks that under `sharding` this process holds exactly the rows the data pipeline gives
  it: the `process_index`-th of `process_count` equal blocks of the global batch
  (`build_pipeline(..., process_index, process_count)` yields [global_batch // count, seq_len]).
  Returns the row range. Call at start-up: a mismatch would silently mix up rows."""
  count, index = jax.process_count(), jax.process_index()
  rows = process_rows(sharding, shape)
  per = shape[0] // count
  expected = (index * per, (index + 1) * per)
  if shape[0] % count or rows != expected:
    raise ValueError(f"process {index} of {count} holds batch rows {rows} under {sharding.spec}, but loads rows "
                     f"{expected} of the {shape[0]}-row global batch; the mesh's batch axes (data, fsdp, expert) "
                     "must split the batch in process order")
  return rows
