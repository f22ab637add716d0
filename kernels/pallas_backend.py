"""Where and how our Pallas kernels run: interpret mode, the GPU compiler backend, and
per-shape block sizes.

- Interpret mode runs a kernel as plain XLA on any backend (how the CPU tests exercise the
  kernels). It is on when `JAXTRAIN_PALLAS_INTERPRET=1` or inside `interpret_mode()`;
  `interpret_mode(False)` forces compiled kernels even when the variable is set.
- Two GPU compiler backends, each chosen explicitly through its compiler params (from JAX 0.10 a
  `pallas_call` without them goes to Mosaic GPU): the Triton kernels (`gmm_pallas`,
  `flash_attention`: pointer-style loads at dynamic offsets, power-of-two tiles) select
  `jax.experimental.pallas.triton.CompilerParams`; the Mosaic GPU kernels (`gmm_mosaic`: TMA,
  WGMMA, Hopper only) select `plgpu.CompilerParams`. `gpu_kernel_backend()` says which of ours
  runs for "pallas" on this device and JAX version: Mosaic GPU on sm_90 (H100/H200) from
  `MOSAIC_MIN_JAX` on, Triton before Hopper, on Blackwell (no WGMMA) and on older JAX.
- Block sizes: each kernel has a default chooser (shape -> block sizes); `set_block_sizes`
  installs a per-shape table or function for an op, and `block_sizes(op, value)` overrides it
  within a `with` block (benchmarks and tests use it).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from typing import Any, Callable

import jax

_INTERPRET: contextvars.ContextVar[bool | None] = contextvars.ContextVar("jaxtrain_pallas_interpret",
                                                                         default=None)
_OVERRIDES: contextvars.ContextVar[dict] = contextvars.ContextVar("jaxtrain_pallas_blocks", default={})
_TUNERS: dict[str, Callable[..., Any]] = {}


def interpret() -> bool:
  """Whether Pallas kernels run in interpret mode (context manager first, then the env var)."""
  forced = _INTERPRET.get()
  if forced is not None:
    return forced
  return os.environ.get("JAXTRAIN_PALLAS_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


_interpret_now = interpret  # for functions whose `interpret` argument shadows the name


@contextlib.contextmanager
def interpret_mode(enabled: bool = True):
  """Run `impl="pallas"` kernels in interpret mode (True) or compiled (False) inside the block.
  The choice is read when a kernel is traced, so wrap the first call of a jitted function."""
  token = _INTERPRET.set(bool(enabled))
  try:
    yield
  finally:
    _INTERPRET.reset(token)


def triton_compiler_params(num_warps: int | None = None, num_stages: int | None = None):
  """Compiler params that select the Triton backend, or None where this JAX has none.

  JAX >= 0.4.36 and 0.10/0.11: `jax.experimental.pallas.triton.CompilerParams` (the backend is
  deprecated in 0.11 but present; its import may warn, which we silence: choosing it is
  deliberate). Older releases: `jax.experimental.pallas.gpu.TritonCompilerParams` (only that
  name there: in between, `pallas.gpu` meant other things)."""
  cls = None
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
      from jax.experimental.pallas import triton as plt
      cls = getattr(plt, "CompilerParams", None)
    except ImportError:
      try:
        from jax.experimental.pallas import gpu as plt_old
        cls = getattr(plt_old, "TritonCompilerParams", None)
      except ImportError:
        pass
  if cls is None:
    return None
  return cls(num_warps=num_warps, num_stages=num_stages)


def pallas_call_kwargs(num_warps: int | None = None, num_stages: int | None = None, *,
                       interpret: bool | None = None) -> dict:
  """The backend-selecting keyword arguments for `pl.pallas_call` (`interpret`: as captured
  when the forward pass was traced, so the backward pass runs the same way)."""
  if _interpret_now() if interpret is None else interpret:
    return {"interpret": True}
  params = triton_compiler_params(num_warps, num_stages)
  return {"compiler_params": params} if params is not None else {}


def can_run() -> bool:
  """True where our Triton-backend kernels can run: interpret mode anywhere, compiled on a GPU
  whose JAX has the Triton backend. TPU and plugin backends (NPU) fall back to the reference."""
  if interpret():
    return True
  return jax.default_backend() == "gpu" and triton_compiler_params() is not None


# ----------------------------------------------------------------------------- Mosaic GPU

MOSAIC_MIN_JAX = (0, 11)  # where "pallas" starts to mean the Mosaic GPU kernels on Hopper
H100_SMS = 132  # SM count used when no GPU is attached (lowering for export, interpret mode)


def jax_version() -> tuple[int, int]:
  major, minor = jax.__version__.split(".")[:2]
  return int(major), int(minor)


def compute_capability() -> tuple[int, int] | None:
  """(major, minor) of the first CUDA device, None off CUDA."""
  if jax.default_backend() != "gpu":
    return None
  cap = getattr(jax.devices()[0], "compute_capability", None)
  if not cap:
    return None
  major, minor = str(cap).split(".")[:2]
  return int(major), int(minor)


def mosaic_gpu_module():
  """`jax.experimental.pallas.mosaic_gpu`, or None where this JAX lacks it."""
  try:
    from jax.experimental.pallas import mosaic_gpu as plgpu
  except ImportError:
    return None
  return plgpu


def mosaic_compiler_params():
  """Compiler params that select Mosaic GPU with warpgroup lowering semantics (WGMMA layouts are
  inferred for whole-warpgroup arrays)."""
  plgpu = mosaic_gpu_module()
  return plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def mosaic_interpret_params():
  """Parameters that run a Mosaic GPU kernel in Pallas' GPU interpreter (any backend: shared
  memory, TMA copies, barriers and WGMMA simulated on the host), or None where this JAX has no
  GPU interpreter. The public name is used where it exists (JAX >= 0.11), else the one JAX
  0.10 ships under `jax._src`. Reads past the end of an array return zeros, as TMA loads do on
  the GPU (the kernels rely on it for the last row tile)."""
  plgpu = mosaic_gpu_module()
  cls = getattr(plgpu, "InterpretParams", None) if plgpu is not None else None
  if cls is None:
    try:
      from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams as cls
    except ImportError:
      return None
  return cls(out_of_bounds_reads="uninitialized", uninitialized_memory="zero")


def mosaic_kernel_kwargs(*, interpret: bool | None = None) -> dict:
  """The backend-selecting keyword arguments for `plgpu.kernel`."""
  if _interpret_now() if interpret is None else interpret:
    return {"interpret": mosaic_interpret_params()}
  return {"compiler_params": mosaic_compiler_params()}


def num_sms() -> int:
  """Streaming multiprocessors of the GPU the kernel will run on (persistent kernels launch one
  program per SM)."""
  if jax.default_backend() == "gpu":
    count = getattr(jax.devices()[0], "core_count", None)
    if count:
      return int(count)
  return H100_SMS


def can_run_mosaic() -> bool:
  """True where our Mosaic GPU kernels can run: in the GPU interpreter anywhere it exists,
  compiled on sm_90 (WGMMA is Hopper's; Blackwell has tcgen05 instead)."""
  if mosaic_gpu_module() is None:
    return False
  if interpret():
    return mosaic_interpret_params() is not None
  cap = compute_capability()
  return cap is not None and cap[0] == 9


def gpu_kernel_backend(capability: tuple[int, int] | None = None, version: tuple[int, int] | None = None) -> str:
  """Which of our GPU kernel families "pallas" runs: "mosaic" on sm_90 with JAX >= MOSAIC_MIN_JAX
  (Triton is deprecated there), else "triton" (pre-Hopper, Blackwell, JAX 0.10). Defaults: this
  machine's first device and installed JAX."""
  capability = compute_capability() if capability is None else capability
  version = jax_version() if version is None else version
  if capability is not None and capability[0] == 9 and version >= MOSAIC_MIN_JAX and mosaic_gpu_module():
    return "mosaic"
  return "triton"


# ----------------------------------------------------------------------------- block sizes

def set_block_sizes(op: str, chooser: Callable[..., Any] | dict | None) -> None:
  """Installs a tuned choice for `op`: a function `(**shape) -> blocks or None` or a dict
  `{shape_key: blocks}` (see each kernel's `shape_key`); None removes it. Anything it does not
  cover uses the kernel's default chooser."""
  if chooser is None:
    _TUNERS.pop(op, None)
  else:
    _TUNERS[op] = chooser


@contextlib.contextmanager
def block_sizes(op: str, value):
  """Forces block sizes for `op` inside the block (value: the kernel's block-size dataclass)."""
  token = _OVERRIDES.set({**_OVERRIDES.get(), op: value})
  try:
    yield
  finally:
    _OVERRIDES.reset(token)


def choose(op: str, default: Callable[..., Any], key: tuple, **shape):
  """Block sizes for one call: an override, else the installed tuning, else `default(**shape)`."""
  forced = _OVERRIDES.get().get(op)
  if forced is not None:
    return forced
  tuner = _TUNERS.get(op)
  if isinstance(tuner, dict) and key in tuner:
    return tuner[key]
  if callable(tuner):
    picked = tuner(**shape)
    if picked is not None:
      return picked
  return default(**shape)


def next_pow2(x: int, minimum: int = 16) -> int:
  p = minimum
  while p < x:
    p *= 2
  return p


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple
