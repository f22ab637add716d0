"""cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

Maps our contract onto what that API offers: causal -> `is_causal`, a causal sliding window w
-> `local_window_size=(w - 1, 0)` (cuDNN's window (pos - w, pos]), GQA/MQA natively. Segment
ids have no cuDNN form in the public API, so they become a dense boolean `[B, 1, T, S]` mask
(cuDNN turns it into a bias: O(T * S) memory, fine for short packed sequences, not for 32k);
rows of segment 0 are zeroed afterwards.

Calls cuDNN cannot express fall back to the XLA reference with one log line per reason:
sinks, explicit positions, S != T, a window without causal masking, fp32 inputs, and any
shape cuDNN rejects when traced (head dim > 128/256, odd lengths with a mask, ...).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from jaxtrain.kernels.attention_xla import attention_reference

log = logging.getLogger("jaxtrain.kernels")
_warned: set[str] = set()


def supported() -> bool:
  """cuDNN exists only on CUDA GPUs."""
  if jax.default_backend() != "gpu":
    return False
  try:
    return "cuda" in jax.devices()[0].client.platform_version.lower()
  except Exception:  # noqa: BLE001 - unknown client objects: assume not CUDA
    return False


def _unsupported_reason(q, k, v, *, q_positions, kv_positions, causal, sliding_window, sinks):
  if sinks is not None:
    return "softmax sinks"
  if q_positions is not None or kv_positions is not None:
    return "explicit positions"
  if q.shape[1] != k.shape[1]:
    return "S != T"
  if sliding_window and not causal:
    return "a sliding window without causal masking"
  if jnp.dtype(q.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"dtype {jnp.dtype(q.dtype).name}"
  return None


def _fallback(reason, **kwargs):
  if reason not in _warned:
    _warned.add(reason)
    log.warning("cudnn attention cannot handle %s; using the XLA reference for such calls", reason)
  return attention_reference(**kwargs)


def cudnn_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                    causal=True, sliding_window=None, sinks=None, scale=None):
  kwargs = dict(q=q, k=k, v=v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                q_positions=q_positions, kv_positions=kv_positions, causal=causal,
                sliding_window=sliding_window, sinks=sinks, scale=scale)
  reason = _unsupported_reason(q, k, v, q_positions=q_positions, kv_positions=kv_positions, causal=causal,
                               sliding_window=sliding_window, sinks=sinks)
  if reason:
    return _fallback(reason, **kwargs)
  mask = any_valid = None
  if q_segment_ids is not None or kv_segment_ids is not None:
    q_seg = jnp.ones(q.shape[:2], jnp.int32) if q_segment_ids is None else q_segment_ids
    kv_seg = q_seg if kv_segment_ids is None else kv_segment_ids
    mask = ((q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0))[:, None]
    any_valid = jnp.any(mask[:, 0], axis=-1)  # [B, T]
  window = (int(sliding_window) - 1, 0) if sliding_window else None
  try:
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=scale,
                                       is_causal=bool(causal), local_window_size=window, implementation="cudnn")
  except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
    return _fallback(f"this call ({type(e).__name__}: {str(e).splitlines()[0][:120]})", **kwargs)
  if any_valid is not None:  # rows that may attend to nothing produce zeros
    out = jnp.where(any_valid[:, :, None, None], out, jnp.zeros_like(out))
  return out.astype(q.dtype)


cudnn_attention.supported = supported
