"""Attention over `[batch, time, heads, head_dim]` arrays: the pure-JAX reference and the
dispatching entry point.

Contract shared by every implementation:
- q `[B, T, H, D]`, k `[B, S, KVH, D]`, v `[B, S, KVH, Dv]`; H is a multiple of KVH (GQA/MQA
  without repeating K/V).
- A query attends to a key when both carry the same non-zero segment id, the key's position
  is not after the query's (causal), and, with a sliding window w, q_pos - kv_pos < w.
- Rows that may attend to nothing (padding, segment 0) produce zeros.
- `sinks` `[H]`: a learned per-head logit that joins the softmax denominator only.

Implementations (`impl`):
- "xla": `attention_xla.attention_reference`; always available, O(T * S) memory.
- "pallas": `flash_attention.flash_attention`, blockwise with O(T) memory; compiled on GPU
  (Triton backend), interpret mode anywhere (`pallas_backend.interpret_mode()` or
  JAXTRAIN_PALLAS_INTERPRET=1), else the reference. Calls with explicit positions or S != T
  (decoding) use the reference.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` on CUDA GPUs; features it
  lacks (sinks, explicit positions, fp32, ...) use the reference.
- "tokamax": `tokamax_ops.attention_tokamax`, tokamax's flash attention (optional extra; an error
  if not installed): packed documents and sliding windows as per-query key ranges; sinks,
  explicit positions and decoding use the reference.
- "chunked": `attention_chunked.chunked_attention`, the same blockwise algorithm in pure JAX
  (lax.scan, custom VJP): O(T) memory on every backend, and faster than the reference on CPU
  from T=512 on; calls that fit in one block are the reference.
- "auto": the row of `auto_table.AUTO` for this platform and device kind: "pallas" on GPU
  (covers every feature with O(T) memory; pending measured numbers from
  experiments/bench_kernels.py), "chunked" on CPU (measured), the reference elsewhere (TPU,
  PJRT plugins such as NPUs: "chunked" runs there too and is one config key away).
"""

from __future__ import annotations

from jaxtrain.kernels import dispatch
from jaxtrain.kernels.attention_chunked import chunked_attention
from jaxtrain.kernels.attention_xla import attention_reference
from jaxtrain.kernels.cudnn_attention import cudnn_attention
from jaxtrain.kernels.flash_attention import flash_attention
from jaxtrain.kernels.tokamax_ops import attention_tokamax

dispatch.register("attention", "xla", attention_reference, reference=True)
dispatch.register("attention", "pallas", flash_attention)
dispatch.register("attention", "cudnn", cudnn_attention)
dispatch.register("attention", "chunked", chunked_attention)
dispatch.register("attention", "tokamax", attention_tokamax)


def attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
              causal=True, sliding_window=None, sinks=None, scale=None, impl="auto"):
  """Attention through the implementation named by `impl` (see `dispatch`)."""
  _, fn = dispatch.resolve("attention", impl)
  return fn(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
            kv_positions=kv_positions, causal=causal, sliding_window=sliding_window, sinks=sinks, scale=scale)
