"""Peak live bytes of a jaxpr run in program order: each value is allocated by the equation that
makes it and freed after its last use. Elementwise chains are assumed fused (an elementwise
result used once, by another elementwise op, gets no buffer of its own), reshapes alias their
input, and calls of sub-programs (jit, remat, custom_vjp, shard_map) add their own inner peak
while they run. Loops count their outputs only: the chunked attention's and loss's inner scans
work on small blocks.

This is how the planner estimates the working set of one layer's backward pass (recomputation,
gradient temporaries, MoE dispatch buffers, unsharded weight gradients) from the real code,
without XLA. XLA fuses more and schedules differently; memory.py's fitted constants absorb what
is systematic (experiments/validate_plan.py).
"""

from __future__ import annotations

import numpy as np
from jax.extend.core import Literal

_ELEMENTWISE = frozenset("""
abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type copy copy_p cos cosh
div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow is_finite le lgamma log log1p logistic lt max
min mul ne neg nextafter not or pow real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan
tanh xor stop_gradient
""".split())
_ALIASING = frozenset("reshape squeeze expand_dims bitcast_convert_type".split())
_SUBPROGRAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _size(v, scale) -> int:
  aval = getattr(v, "aval", None)
  if aval is None or not hasattr(aval, "shape"):
    return 0
  n = int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
  return n // scale(v)


def _sub_jaxpr(eqn):
  for key in _SUBPROGRAMS:
    sub = eqn.params.get(key)
    if sub is not None:
      return getattr(sub, "jaxpr", sub)
  return None


def peak_bytes(jaxpr, scale=lambda v: 1) -> int:
  """Peak bytes live above the inputs while `jaxpr` runs in program order. `scale(var)` divides
  a value's size (e.g. by the number of vmapped peers it carries)."""
  eqns = jaxpr.eqns
  consumers: dict = {}
  for i, eqn in enumerate(eqns):
    for v in eqn.invars:
      if not isinstance(v, Literal):
        consumers.setdefault(v, []).append(i)
  outs = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
  owner: dict = {}  # value -> the buffer it lives in (itself, or what it aliases)
  last: dict = {}  # buffer -> index of its last use
  sizes: dict = {}
  for i, eqn in enumerate(eqns):
    name = eqn.primitive.name
    for v in eqn.outvars:
      users = consumers.get(v, [])
      if name in _ALIASING and eqn.invars and not isinstance(eqn.invars[0], Literal) and eqn.invars[0] in owner:
        owner[v] = owner[eqn.invars[0]]
      elif name in _ELEMENTWISE and len(users) == 1 and v not in outs and eqns[users[0]].primitive.name in _ELEMENTWISE:
        owner[v] = None  # fused into its consumer
      else:
        owner[v] = v
        sizes[v] = _size(v, scale)
      buf = owner[v]
      if buf is not None:
        end = len(eqns) if v in outs else max(users, default=i)
        last[buf] = max(last.get(buf, i), end)
  live = peak = 0
  frees: dict = {}
  for buf, end in last.items():
    frees.setdefault(end, []).append(buf)
  for i, eqn in enumerate(eqns):
    sub = _sub_jaxpr(eqn)
    inner = peak_bytes(sub, scale) if sub is not None and eqn.primitive.name not in ("scan", "while") else 0
    made = sum(sizes.get(v, 0) for v in eqn.outvars if owner.get(v) is v)
    peak = max(peak, live + inner, live + made)
    live += made
    for buf in frees.get(i, ()):
      live -= sizes.get(buf, 0)
  return peak


__all__ = ["peak_bytes"]
