"""Pallas flash attention (forward and backward) for `[B, T, H, D]` arrays.

Same contract as `attention_reference` (see attention.py), computed blockwise with an online
softmax so memory is O(T) instead of O(T * S):

- forward, grid (B, H, T / block_q): one query block against the key blocks it may see (causal
  and sliding-window bounds skip the rest); keeps the running max `m`, denominator `l` and
  fp32 accumulator, and also writes the log-sum-exp `lse = m + log(l)` per row for the
  backward pass. A sink starts each row at m = sink, l = 1, so it joins the denominator only.
- backward (FlashAttention-2 style, recomputing probabilities from `lse`):
  dK/dV kernel, grid (B, KVH, S / block_k): each key block loops over the G query heads that
  share its K/V head and over the query blocks that may see it, so GQA/MQA gradients are
  summed in registers and K/V are never repeated; dQ kernel, grid (B, H, T / block_q).
  delta = rowsum(dO * O) and the sink gradient -sum(exp(sink - lse) * delta) are plain XLA.
- masking inside the kernel: same non-zero segment id, key index <= query index (causal),
  query index - key index < window. Fully masked rows keep l = 0 and produce zeros; the
  masked probability is forced to exactly 0, so no NaN or inf appears in either pass.

Shapes: T and S are padded to a multiple of the blocks with segment id 0 (never attended,
and their outputs are dropped), head dims are zero-padded to a power of two >= 16 (what
Triton's dot needs; MLA's 192 runs as 256 for q/k), and the value head dim may differ from
the query/key one.

Positions are the row index. That equals the contract whenever positions are implicit, and
under packing (per-document positions restart at 0 but the segment mask keeps attention inside
a document, where position differences equal index differences). Calls with explicit
`q_positions`/`kv_positions` or with S != T (decoding against a cache) fall back to the XLA
reference, with one log line.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxtrain.kernels import pallas_backend as pb
from jaxtrain.kernels.attention_xla import attention_reference

log = logging.getLogger("jaxtrain.kernels")
_MASKED = -1e30
_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class FlashBlocks:
  """Block sizes and Triton launch parameters of the forward and backward kernels."""
  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int = 4
  num_stages: int = 2
  num_warps_bwd: int = 4
  num_stages_bwd: int = 2


def default_blocks(*, seq_len, head_dim, v_head_dim, dtype, causal, sliding_window):
  """GPU defaults in the range Triton flash-attention kernels use on Hopper; tune per shape with
  `pallas_backend.set_block_sizes("attention", ...)` from experiments/bench_kernels.py runs."""
  del causal, sliding_window
  cap = pb.next_pow2(seq_len)
  d = pb.next_pow2(max(head_dim, v_head_dim))
  wide = jnp.dtype(dtype).itemsize >= 4  # fp32 tiles take twice the shared memory
  bq, bk = (128, 64) if d <= 128 and not wide else (64, 32)
  bb = 64 if d <= 64 and not wide else 32  # backward keeps two fp32 [block, D] accumulators
  return FlashBlocks(block_q=min(bq, cap), block_k=min(bk, cap), block_q_bwd=min(bb, cap),
                     block_k_bwd=min(bb, cap), num_warps=4 if d <= 64 else 8, num_stages=2,
                     num_warps_bwd=4, num_stages_bwd=2)


@dataclasses.dataclass(frozen=True)
class _Cfg:
  causal: bool
  window: int | None
  scale: float
  has_sinks: bool
  groups: int  # query heads per K/V head
  blocks: FlashBlocks
  interpret: bool


def _precision(dtype):
  return lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


def _dot(a, b, contract, precision):
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)


def _mask(q_idx, k_idx, q_seg, k_seg, cfg):
  """q_idx/q_seg: [bq, 1], k_idx/k_seg: [1, bk] -> bool [bq, bk]."""
  mask = (q_seg == k_seg) & (q_seg != 0)
  if cfg.causal:
    mask &= k_idx <= q_idx
  if cfg.window:
    mask &= q_idx - k_idx < cfg.window
  return mask


def _kv_block_range(q_start, bq, bk, num_k, cfg):
  """Key blocks [lo, hi) that queries [q_start, q_start + bq) may see."""
  lo, hi = 0, num_k
  if cfg.causal:
    hi = jnp.minimum(num_k, (q_start + bq + bk - 1) // bk)
  if cfg.window:
    lo = jnp.maximum(q_start - cfg.window + 1, 0) // bk
  return lo, hi


def _q_block_range(k_start, bq, bk, num_q, cfg):
  """Query blocks [lo, hi) that may see keys [k_start, k_start + bk)."""
  lo, hi = 0, num_q
  if cfg.causal:
    lo = k_start // bq
  if cfg.window:
    hi = jnp.minimum(num_q, (k_start + bk - 1 + cfg.window + bq - 1) // bq)
  return lo, hi


# ----------------------------------------------------------------------------- forward

def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, sinks_ref, o_ref, lse_ref, *, cfg, num_k):
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  h, i = pl.program_id(1), pl.program_id(2)
  q = q_ref[...]
  precision = _precision(q.dtype)
  q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)[:, None]
  q_seg = qseg_ref[...][:, None]
  if cfg.has_sinks:
    m0 = jnp.full((bq,), sinks_ref[h], jnp.float32)
    l0 = jnp.ones((bq,), jnp.float32)
  else:
    m0 = jnp.full((bq,), _MASKED, jnp.float32)
    l0 = jnp.zeros((bq,), jnp.float32)
  acc0 = jnp.zeros((bq, v_ref.shape[-1]), jnp.float32)

  def body(j, carry):
    m, l, acc = carry
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)[None, :]
    k_seg = kseg_ref[pl.ds(j * bk, bk)][None, :]
    mask = _mask(q_idx, k_idx, q_seg, k_seg, cfg)
    s = _dot(q, k, ((1,), (1,)), precision) * cfg.scale
    s = jnp.where(mask, s, _MASKED)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m - m_new)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, ((1,), (0,)), precision)
    return m_new, l, acc

  lo, hi = _kv_block_range(i * bq, bq, bk, num_k, cfg)
  m, l, acc = lax.fori_loop(lo, hi, body, (m0, l0, acc0))
  l_safe = jnp.where(l == 0.0, 1.0, l)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l_safe)


def _fwd_call(q, k, v, q_seg, kv_seg, sinks, cfg):
  B, T, H, D = q.shape
  S, Dv = k.shape[1], v.shape[-1]
  G, bq, bk = cfg.groups, cfg.blocks.block_q, cfg.blocks.block_k
  kernel = functools.partial(_fwd_kernel, cfg=cfg, num_k=S // bk)
  return pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((B, T, H, Dv), q.dtype), jax.ShapeDtypeStruct((B, H, T), jnp.float32)),
      grid=(B, H, T // bq),
      in_specs=[
          pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
          pl.BlockSpec((None, S, None, Dv), lambda b, h, i: (b, 0, h // G, 0)),
          pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
          pl.BlockSpec((None, S), lambda b, h, i: (b, 0)),
          pl.BlockSpec((H,), lambda b, h, i: (0,)),
      ],
      out_specs=[
          pl.BlockSpec((None, bq, None, Dv), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
      ],
      name="jaxtrain_flash_fwd",
      **pb.pallas_call_kwargs(cfg.blocks.num_warps, cfg.blocks.num_stages, interpret=cfg.interpret),
  )(q, k, v, q_seg, kv_seg, sinks)


# ----------------------------------------------------------------------------- backward

def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dk_ref, dv_ref, *,
                cfg, num_q):
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  j = pl.program_id(2)
  k = k_ref[...]
  v = v_ref[...]
  precision = _precision(k.dtype)
  k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)[None, :]
  k_seg = kseg_ref[...][None, :]
  lo, hi = _q_block_range(j * bk, bq, bk, num_q, cfg)

  def head_body(g, carry):
    def q_body(i, carry):
      dk, dv = carry
      rows = pl.ds(i * bq, bq)
      q = q_ref[rows, g, :]
      do = do_ref[rows, g, :]
      lse = lse_ref[g, rows]
      delta = delta_ref[g, rows]
      q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)[:, None]
      q_seg = qseg_ref[rows][:, None]
      mask = _mask(q_idx, k_idx, q_seg, k_seg, cfg)
      s = _dot(q, k, ((1,), (1,)), precision) * cfg.scale
      p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
      dv = dv + _dot(p.astype(do.dtype), do, ((0,), (0,)), precision)
      dp = _dot(do, v, ((1,), (1,)), precision)
      ds = p * (dp - delta[:, None])
      dk = dk + _dot(ds.astype(q.dtype), q, ((0,), (0,)), precision)
      return dk, dv

    return lax.fori_loop(lo, hi, q_body, carry)

  dk0 = jnp.zeros(k.shape, jnp.float32)
  dv0 = jnp.zeros(v.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, cfg.groups, head_body, (dk0, dv0))
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, dq_ref, *, cfg, num_k):
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  i = pl.program_id(2)
  q = q_ref[...]
  do = do_ref[...]
  precision = _precision(q.dtype)
  lse = lse_ref[...][:, None]
  delta = delta_ref[...][:, None]
  q_idx = i * bq + jnp.arange(bq, dtype=jnp.int32)[:, None]
  q_seg = qseg_ref[...][:, None]

  def body(j, dq):
    k = k_ref[pl.ds(j * bk, bk), :]
    v = v_ref[pl.ds(j * bk, bk), :]
    k_idx = j * bk + jnp.arange(bk, dtype=jnp.int32)[None, :]
    k_seg = kseg_ref[pl.ds(j * bk, bk)][None, :]
    mask = _mask(q_idx, k_idx, q_seg, k_seg, cfg)
    s = _dot(q, k, ((1,), (1,)), precision) * cfg.scale
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    dp = _dot(do, v, ((1,), (1,)), precision)
    ds = p * (dp - delta)
    return dq + _dot(ds.astype(k.dtype), k, ((1,), (0,)), precision)

  lo, hi = _kv_block_range(i * bq, bq, bk, num_k, cfg)
  dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _bwd_calls(q, k, v, q_seg, kv_seg, out, lse, do, cfg):
  B, T, H, D = q.shape
  S, KVH, Dv = k.shape[1], k.shape[2], v.shape[-1]
  G, bq, bk = cfg.groups, cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  do = do.astype(q.dtype)
  delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), do.astype(jnp.float32))
  kw = pb.pallas_call_kwargs(cfg.blocks.num_warps_bwd, cfg.blocks.num_stages_bwd, interpret=cfg.interpret)

  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, num_q=T // bq),
      out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
      grid=(B, KVH, S // bk),
      in_specs=[
          pl.BlockSpec((None, T, G, D), lambda b, kh, j: (b, 0, kh, 0)),
          pl.BlockSpec((None, bk, None, D), lambda b, kh, j: (b, j, kh, 0)),
          pl.BlockSpec((None, bk, None, Dv), lambda b, kh, j: (b, j, kh, 0)),
          pl.BlockSpec((None, T, G, Dv), lambda b, kh, j: (b, 0, kh, 0)),
          pl.BlockSpec((None, G, T), lambda b, kh, j: (b, kh, 0)),
          pl.BlockSpec((None, G, T), lambda b, kh, j: (b, kh, 0)),
          pl.BlockSpec((None, T), lambda b, kh, j: (b, 0)),
          pl.BlockSpec((None, bk), lambda b, kh, j: (b, j)),
      ],
      out_specs=[
          pl.BlockSpec((None, bk, None, D), lambda b, kh, j: (b, j, kh, 0)),
          pl.BlockSpec((None, bk, None, Dv), lambda b, kh, j: (b, j, kh, 0)),
      ],
      name="jaxtrain_flash_bwd_dkv",
      **kw,
  )(q, k, v, do, lse, delta, q_seg, kv_seg)

  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, num_k=S // bk),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(B, H, T // bq),
      in_specs=[
          pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((None, S, None, D), lambda b, h, i: (b, 0, h // G, 0)),
          pl.BlockSpec((None, S, None, Dv), lambda b, h, i: (b, 0, h // G, 0)),
          pl.BlockSpec((None, bq, None, Dv), lambda b, h, i: (b, i, h, 0)),
          pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
          pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
          pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
          pl.BlockSpec((None, S), lambda b, h, i: (b, 0)),
      ],
      out_specs=pl.BlockSpec((None, bq, None, D), lambda b, h, i: (b, i, h, 0)),
      name="jaxtrain_flash_bwd_dq",
      **kw,
  )(q, k, v, do, lse, delta, q_seg, kv_seg)
  return dq, dk, dv, delta


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(q, k, v, q_seg, kv_seg, sinks, cfg):
  return _fwd_call(q, k, v, q_seg, kv_seg, sinks, cfg)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, sinks, cfg):
  out, lse = _fwd_call(q, k, v, q_seg, kv_seg, sinks, cfg)
  return out, (q, k, v, q_seg, kv_seg, sinks, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, q_seg, kv_seg, sinks, out, lse = res
  dq, dk, dv, delta = _bwd_calls(q, k, v, q_seg, kv_seg, out, lse, do, cfg)
  if cfg.has_sinks:
    # d out / d sink_h = -p_sink * out, with p_sink = exp(sink_h - lse) per row.
    dsinks = -jnp.sum(jnp.exp(sinks[None, :, None] - lse) * delta, axis=(0, 2))
  else:
    dsinks = jnp.zeros_like(sinks)
  return dq, dk, dv, None, None, dsinks


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- entry point

def _fallback(reason: str, **kwargs):
  if reason not in _warned:
    _warned.add(reason)
    log.warning("pallas flash attention: %s; using the XLA reference for such calls", reason)
  return attention_reference(**kwargs)


def flash_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None, kv_positions=None,
                    causal=True, sliding_window=None, sinks=None, scale=None, block_sizes=None):
  """Pallas flash attention with the `attention_reference` contract; `block_sizes` (FlashBlocks)
  forces the blocks, otherwise `pallas_backend.choose("attention", ...)` picks them."""
  B, T, H, D = q.shape
  S, KVH, Dv = k.shape[1], k.shape[2], v.shape[-1]
  if q_positions is not None or kv_positions is not None or S != T:
    return _fallback("explicit positions or S != T (decoding) are not handled by the kernel",
                     q=q, k=k, v=v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                     q_positions=q_positions, kv_positions=kv_positions, causal=causal,
                     sliding_window=sliding_window, sinks=sinks, scale=scale)
  if H % KVH:
    raise ValueError(f"query heads {H} must be a multiple of key/value heads {KVH}")
  scale = D ** -0.5 if scale is None else float(scale)
  window = int(sliding_window) if sliding_window else None
  if block_sizes is None:
    key = (T, D, Dv, jnp.dtype(q.dtype).name, bool(causal), window)
    block_sizes = pb.choose("attention", default_blocks, key, seq_len=T, head_dim=D, v_head_dim=Dv,
                            dtype=q.dtype, causal=bool(causal), sliding_window=window)
  cfg = _Cfg(causal=bool(causal), window=window, scale=scale, has_sinks=sinks is not None, groups=H // KVH,
             blocks=block_sizes, interpret=pb.interpret())

  if q_segment_ids is None:
    q_segment_ids = jnp.ones((B, T), jnp.int32)
  if kv_segment_ids is None:
    kv_segment_ids = q_segment_ids
  b = block_sizes
  Tp = pb.round_up(T, max(b.block_q, b.block_k, b.block_q_bwd, b.block_k_bwd))
  Dp, Dvp = pb.next_pow2(D), pb.next_pow2(Dv)

  def pad(x, d):
    return jnp.pad(x.astype(q.dtype), ((0, 0), (0, Tp - T), (0, 0), (0, d - x.shape[-1])))

  def pad_seg(s):
    return jnp.pad(s.astype(jnp.int32), ((0, 0), (0, Tp - T)))

  sinks_f32 = jnp.zeros((H,), jnp.float32) if sinks is None else sinks.astype(jnp.float32)
  out = _flash(pad(q, Dp), pad(k, Dp), pad(v, Dvp), pad_seg(q_segment_ids), pad_seg(kv_segment_ids), sinks_f32, cfg)
  return out[:, :T, :, :Dv]


flash_attention.supported = pb.can_run
