"""`impl="tokamax"`: grouped matmul and attention from the optional `tokamax` package (Google's
kernel library: Mosaic GPU / Triton kernels chosen per device, an XLA path elsewhere), behind
our contracts. It is the bar our own kernels are measured against.

tokamax is an optional extra (`pip install 'jaxtrain[tokamax]'`); it is imported only when one
of these functions is traced, never by `import jaxtrain.kernels`. Asking for it where it is not
installed is an error that says how to install it (config validation reports it against the
`kernels.*` key first).

- gmm / tgmm: `tokamax.ragged_dot_general` with the dimension numbers of each layout (rhs
  `[g,k,n]`, rhs transposed `[g,n,k]`, and the ragged-contracting weight gradient); tokamax
  differentiates them itself. Rows past sum(group_sizes) are zeroed (our contract).
- attention: tokamax's flash attention with a per-query key range (`Mask(k_start, k_end)`), which
  expresses packed documents (segment ids) and sliding windows in O(T) memory; padding rows
  attend to themselves and are zeroed afterwards, so no row is empty (no NaN in either pass).
  Positions are the row index (as in our Pallas kernel). Sinks, explicit positions and S != T
  (decoding) are not expressible there: such calls use the XLA reference, with one log line.
  The key-range mask is tokamax's internal `Mask` type (the public function takes only dense
  boolean masks, O(T^2) memory): the import is checked and named if it moves.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

import jax
import jax.numpy as jnp

from jaxtrain.kernels.attention_xla import attention_reference

log = logging.getLogger("jaxtrain.kernels")
_warned: set[str] = set()

INSTALL_HINT = ("install the optional extra: pip install 'jaxtrain[tokamax]' (tokamax wants a recent jax; "
                "on an offline GPU machine add its wheels to .whl/, see experiments/gpu_check.sh)")


def installed() -> bool:
  """Whether `tokamax` can be imported (without importing it)."""
  try:
    return importlib.util.find_spec("tokamax") is not None
  except (ImportError, ValueError):
    return False


def _import(name: str = "tokamax"):
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise ImportError(f"kernels impl 'tokamax' needs the tokamax package, which cannot be imported here "
                      f"({type(e).__name__}: {e}); {INSTALL_HINT}") from e
  # tokamax reads its options as absl flags and parses sys.argv the first time one is read, which
  # fails on any other program's arguments (ours: --config ...); its defaults are what we want.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return module


def _dims(contract, lhs_ragged=(0,), rhs_group=(0,)):
  return jax.lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(contract, ((), ())),
                                           lhs_ragged_dimensions=list(lhs_ragged), rhs_group_dimensions=list(rhs_group))


def _rows_in_groups(out, group_sizes):
  rows = jnp.arange(out.shape[0], dtype=jnp.int32)[:, None]
  return jnp.where(rows < jnp.sum(jnp.maximum(group_sizes, 0)), out, jnp.zeros_like(out))


def gmm_tokamax(lhs, rhs, group_sizes, *, transpose_rhs=False, preferred_element_type=None):
  """`gmm_reference`'s contract through `tokamax.ragged_dot_general`."""
  tokamax = _import()
  out_dtype = lhs.dtype if preferred_element_type is None else preferred_element_type
  dtype = jnp.promote_types(lhs.dtype, rhs.dtype)
  contract = ((1,), (2,)) if transpose_rhs else ((1,), (1,))
  out = tokamax.ragged_dot_general(lhs.astype(dtype), rhs.astype(dtype), group_sizes.astype(jnp.int32),
                                   _dims(contract), preferred_element_type=jnp.float32)
  return _rows_in_groups(out, group_sizes).astype(out_dtype)


def tgmm_tokamax(lhs, grad, group_sizes, *, num_groups=None, preferred_element_type=None):
  """`tgmm_reference`'s contract (per group lhs_g^T @ grad_g) as tokamax's ragged-contracting
  `ragged_dot_general`."""
  tokamax = _import()
  out_dtype = lhs.dtype if preferred_element_type is None else preferred_element_type
  sizes = group_sizes.astype(jnp.int32)
  if num_groups is not None and num_groups > sizes.shape[0]:
    sizes = jnp.pad(sizes, (0, num_groups - sizes.shape[0]))
  dtype = jnp.promote_types(lhs.dtype, grad.dtype)
  rows = jnp.arange(lhs.shape[0], dtype=jnp.int32)[:, None]
  lhs = jnp.where(rows < jnp.sum(jnp.maximum(sizes, 0)), lhs, jnp.zeros_like(lhs))  # rows past the groups
  out = tokamax.ragged_dot_general(lhs.astype(dtype), grad.astype(dtype), sizes,
                                   _dims(((0,), (0,)), rhs_group=()), preferred_element_type=jnp.float32)
  return out.astype(out_dtype)


def _fallback(reason: str, **kwargs):
  if reason not in _warned:
    _warned.add(reason)
    log.warning("tokamax attention: %s; using the XLA reference for such calls", reason)
  return attention_reference(**kwargs)


def key_ranges(segment_ids, *, causal: bool, sliding_window: int | None):
  """Per query, the half-open range [k_start, k_end) of key indices it may attend to, for
  contiguous documents (the packing contract). Causal limits are left to the kernel; padding
  (segment 0) gets its own index only, and must be zeroed afterwards."""
  B, T = segment_ids.shape
  idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  new_doc = jnp.concatenate([jnp.ones((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start = jax.lax.cummax(jnp.where(new_doc, idx, 0), axis=1)
  doc_end = jnp.concatenate([new_doc[:, 1:], jnp.ones((B, 1), bool)], axis=1)  # last index of a document
  end = jax.lax.cummin(jnp.where(doc_end, idx + 1, T), axis=1, reverse=True)
  if sliding_window:
    start = jnp.maximum(start, idx - sliding_window + 1)
  if causal:
    end = jnp.minimum(end, idx + 1)
  padding = segment_ids == 0
  return jnp.where(padding, idx, start), jnp.where(padding, idx + 1, end)


def attention_tokamax(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                      causal=True, sliding_window=None, sinks=None, scale=None, implementation=None):
  """`attention_reference`'s contract through tokamax's flash attention (`implementation`:
  tokamax's own choice when None: Mosaic GPU or Triton on GPUs, XLA elsewhere)."""
  kwargs = dict(q=q, k=k, v=v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
                kv_positions=kv_positions, causal=causal, sliding_window=sliding_window, sinks=sinks, scale=scale)
  if sinks is not None:
    return _fallback("softmax sinks are not supported", **kwargs)
  if q_positions is not None or kv_positions is not None or q.shape[1] != k.shape[1]:
    return _fallback("explicit positions or S != T (decoding) are not supported", **kwargs)
  if kv_segment_ids is not None and kv_segment_ids is not q_segment_ids:
    return _fallback("separate key segment ids are not supported", **kwargs)
  _import()
  try:
    api = importlib.import_module("tokamax._src.ops.attention.api")
    base = importlib.import_module("tokamax._src.ops.attention.base")
    mask_cls = base.Mask
  except (ImportError, AttributeError) as e:
    raise ImportError(f"this tokamax has no attention key-range mask (tokamax._src.ops.attention.base.Mask: {e}); "
                      "jaxtrain's adapter was written against tokamax 0.0.12") from e
  B, T = q.shape[:2]
  segment_ids = jnp.ones((B, T), jnp.int32) if q_segment_ids is None else q_segment_ids.astype(jnp.int32)
  window = int(sliding_window) if sliding_window else None
  start, end = key_ranges(segment_ids, causal=False, sliding_window=window)
  mask = mask_cls(k_start=start[:, None, :], k_end=end[:, None, :], is_causal=bool(causal))
  impls = api.IMPLEMENTATIONS
  names = [implementation] if implementation else [n for n in ("mosaic_gpu", "triton") if n in impls] + ["xla"]
  if jax.default_backend() != "gpu":
    names = ["xla"] if implementation is None else names
  scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
  errors = []
  for name in names:
    try:
      out = impls[name](q, k.astype(q.dtype), v.astype(q.dtype), bias=None, mask=mask, logits_scale=scale,
                        precision=None, logits_soft_cap=None, q_sharding=None)
      break
    except NotImplementedError as e:
      errors.append(f"{name}: {e}")
  else:
    return _fallback("no tokamax implementation accepts this call (" + "; ".join(errors)[:200] + ")", **kwargs)
  out = jnp.where((segment_ids != 0)[:, :, None, None], out, jnp.zeros_like(out))
  return out.astype(q.dtype)
