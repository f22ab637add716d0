"""Model hyper-parameters: the `model` config section and the frozen `ModelConfig` the
modules read. Field names follow Hugging Face where one exists."""

from __future__ import annotations

import dataclasses
from typing import Any

from ml_collections import ConfigDict

from jaxtrain import kernels
from jaxtrain.kernels import tokamax_ops
from jaxtrain.config import is_auto, require

REMAT_POLICIES = ("none", "full", "save_dots", "save_attention_out", "offload_dots", "offload_input")
MOE_IMPLS = ("dropless", "capacity")
ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_group")
ROPE_TYPES = ("none", "linear", "llama3", "yarn")
LAYER_TYPES = ("full_attention", "sliding_attention")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
ATTENTIONS = ("gqa", "mla")
EXPERT_ACTIVATIONS = ("glu", "clamped_swiglu")
VISION_TOWERS = ("none", "rope_vit", "cls_vit")
VISION_NORMS = ("layer_norm", "rms_norm")
MODEL_PARTS = ("vision", "projector", "language_model")  # what `model.freeze` names


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  type: str = "none"  # none | linear | llama3 | yarn
  factor: float = 1.0  # context extension factor
  # llama3
  low_freq_factor: float = 1.0  # llama3: wavelengths above original / low_freq_factor are scaled by 1 / factor
  high_freq_factor: float = 4.0  # llama3: wavelengths below original / high_freq_factor are kept
  original_max_position_embeddings: int = 0  # llama3 / yarn: the context length the model was trained with
  # yarn
  beta_fast: float = 32.0  # yarn: rotations above which dimensions are kept (interpolation ramp end)
  beta_slow: float = 1.0  # yarn: rotations below which dimensions are interpolated (ramp start)
  mscale: float = 1.0  # yarn: attention temperature scale
  mscale_all_dim: float = 0.0  # yarn (DeepSeek): mscale also applied to every dimension
  attention_factor: float = 0.0  # 0 = derive from factor (and mscale) as HF does
  truncate: bool = True  # yarn: round the ramp's correction range to whole dimensions (HF's default)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The vision tower and projector of a vision-language model (the `model.vision` section).

  tower "rope_vit" (Qwen3-VL): 3D patch embedding over (temporal, height, width) patches, a
  learned position grid resampled bilinearly to each image, 2D rotary positions, attention
  within each image (frame), a 2x2 patch merger as projector, and DeepStack: the merged
  features of `deepstack_layers` are added to the language model's hidden states after its
  first len(deepstack_layers) layers. tower "cls_vit" (InternViT): 2D patch embedding with a
  class token and learned positions, layer-scaled pre-norm blocks, pixel shuffle by
  `spatial_merge_size`, and an MLP projector."""
  tower: str = "none"  # "none" = a text-only model
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  intermediate_size: int = 128
  activation: str = "gelu_tanh"
  norm: str = "layer_norm"  # cls_vit blocks: "layer_norm" | "rms_norm" (rope_vit: layer_norm)
  norm_eps: float = 1e-6  # epsilon of the tower's norms
  in_channels: int = 3  # colour channels of the pixels
  patch_size: int = 16  # side of a square patch in pixels
  temporal_patch_size: int = 2  # rope_vit: frames per patch (an image is its frame repeated)
  image_size: int = 448  # cls_vit: side of a (square) image tile in pixels
  spatial_merge_size: int = 2  # rope_vit: merger window side; cls_vit: pixel-shuffle factor
  num_position_embeddings: int = 2304  # rope_vit: learned position grid (a square number)
  rope_theta: float = 10000.0  # rope_vit: 2D rotary base
  deepstack_layers: tuple[int, ...] = ()  # rope_vit: tower layers feeding DeepStack
  qkv_bias: bool = True  # bias on the tower's q/k/v projections
  qk_norm: bool = False  # cls_vit: RMSNorm on queries and keys over the whole width
  final_norm: bool = False  # cls_vit: LayerNorm after the last block (HF use_mean_pooling=False)
  projector_activation: str = "gelu"  # cls_vit projector
  projector_norm_eps: float = 1e-5  # cls_vit projector LayerNorm
  image_token_id: int = -1  # placeholder token the image features replace
  video_token_id: int = -1  # rope_vit: placeholder token of video frames
  row_capacity: int = 0  # training batches: patches (rope_vit) or tiles (cls_vit) per row; 0 = from seq_len
  remat: str = "none"  # the tower's own rematerialisation policy (REMAT_POLICIES)

  @property
  def enabled(self) -> bool:
    return self.tower != "none"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Values per rope_vit patch: channels x frames x pixels."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def tokens_per_tile(self) -> int:
    """cls_vit: language-model tokens one image tile becomes."""
    side = self.image_size // self.patch_size // self.spatial_merge_size
    return side * side


@dataclasses.dataclass(frozen=True)
class LayerKind:
  """What makes two decoder layers structurally different (they cannot share a scan)."""
  moe: bool
  sliding_window: int  # 0 = full attention
  inject: bool = False  # DeepStack: vision features are added to this layer's output


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every architecture and numerics choice of a model. Its defaults are the defaults of the
  `model` config section (`defaults()`), which holds the same fields plus `init_from`."""
  arch: str = "qwen3_moe"  # the Hugging Face model_type this model exports as
  vocab_size: int = 272  # rows of the embedding and LM head (>= the tokenizer's vocabulary)
  hidden_size: int = 128  # width of the residual stream
  num_layers: int = 4  # decoder layers
  num_heads: int = 4  # attention (query) heads
  num_kv_heads: int = 2  # key/value heads (GQA: num_heads is a multiple of it)
  head_dim: int = 32  # 0 = hidden_size // num_heads
  intermediate_size: int = 512  # dense MLP layers
  activation: str = "silu"  # MLP activation: silu | gelu | gelu_tanh | relu
  rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm
  rope_theta: float = 1_000_000.0  # rotary embedding base
  rope_scaling: RopeScaling = RopeScaling()
  # Multimodal rotary positions (Qwen3-VL): per-frequency counts of the (temporal, height,
  # width) position rows, interleaved t,h,w,t,h,w,...; () = one position row (plain RoPE).
  mrope_section: tuple[int, ...] = ()
  max_position_embeddings: int = 4096  # longest sequence the rotary embedding is set up for
  qk_norm: bool = True  # RMSNorm on each head's queries and keys (Qwen3)
  attention_bias: bool = False  # bias on q/k/v projections
  attention_out_bias: bool = False  # bias on the output projection
  sliding_window: int = 0  # keys a sliding-attention layer sees (0 = full attention)
  layer_types: tuple[str, ...] = ()  # per layer "full_attention" | "sliding_attention"; () = all full
  attention_sinks: bool = False  # a learned per-head logit joins each softmax denominator (GPT-OSS)
  # Attention block: "gqa" (grouped-query) or "mla" (DeepSeek multi-head latent attention, which
  # reads the MLA fields below and ignores num_kv_heads / head_dim).
  attention: str = "gqa"
  q_lora_rank: int = 0  # MLA: rank of the query down-projection (0 = full-rank q projection)
  kv_lora_rank: int = 0  # MLA: rank of the compressed key/value latent
  qk_nope_head_dim: int = 0  # MLA: per-head query/key dims without rotary embedding
  qk_rope_head_dim: int = 0  # MLA: per-head query/key dims with rotary embedding (shared key part)
  v_head_dim: int = 0  # MLA: per-head value dims
  rope_interleave: bool = False  # MLA: rotary dims come as interleaved pairs (DeepSeek checkpoints)
  tie_word_embeddings: bool = False  # the LM head reuses the embedding matrix
  initializer_range: float = 0.02  # standard deviation of the random initialisation
  # Mixture of experts (num_experts = 0: every layer dense).
  num_experts: int = 8  # routed experts per MoE layer (0 = every layer dense)
  num_experts_per_tok: int = 2  # experts each token is routed to (top-k)
  moe_intermediate_size: int = 256  # hidden size of each routed expert
  norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1
  decoder_sparse_step: int = 1  # every Nth layer is MoE (1 = all)
  mlp_only_layers: tuple[int, ...] = ()  # indices of layers kept dense
  first_k_dense: int = 0  # the first k layers are dense (DeepSeek-V3)
  shared_expert_intermediate_size: int = 0  # hidden size of the shared expert every token uses (0 = none)
  shared_expert_gate: bool = False  # a sigmoid gate on the shared expert's output (Qwen2-MoE)
  router: str = "softmax_topk"  # softmax_topk (softmax, then top-k) | topk_softmax (top-k, then softmax) | sigmoid_group
  # sigmoid_group router (DeepSeek-V3): experts in n_group groups, tokens pick among the topk_group
  # best groups; selection uses sigmoid scores + a score-correction bias.
  n_group: int = 1  # sigmoid_group router (DeepSeek-V3): experts in n_group groups
  topk_group: int = 1  # sigmoid_group router: tokens pick their experts among the topk_group best groups
  routed_scaling_factor: float = 1.0  # multiplies the routing weights of the routed experts
  # Aux-loss-free balancing: after every train step the score-correction bias of each
  # sigmoid_group MoE layer moves by this rate towards balance (+rate for underloaded experts,
  # -rate for overloaded ones); 0 = frozen bias.
  router_bias_update_rate: float = 0.001
  expert_bias: bool = False  # biases on the routed experts' gate/up and down projections
  expert_activation: str = "glu"  # "glu": activation(gate) * up; "clamped_swiglu": GPT-OSS
  swiglu_alpha: float = 1.702  # clamped_swiglu: gate * sigmoid(alpha * gate)
  swiglu_limit: float = 7.0  # clamped_swiglu: gate <= limit, |up| <= limit
  moe_impl: str = "dropless"  # dropless (every token copy computed) | capacity (per-expert capacity, overflow dropped)
  # Tokens of a row per chunk of the dense MLPs and routed experts (0 = the whole row): long rows
  # run them chunk by chunk, each recomputed in the backward pass (their intermediates then exist
  # for one chunk at a time); the router and its losses still see every token.
  ffn_chunk: int = 0
  capacity_factor: float = 1.25  # moe_impl=capacity: expert capacity = factor * tokens * top-k / experts
  aux_loss_weight: float = 0.001  # weight of the load-balancing auxiliary loss
  seq_aux_loss_weight: float = 0.0  # DeepSeek-V3 sequence-wise balance loss (per packed document)
  z_loss_weight: float = 0.0  # weight of the router z-loss (keeps router logits small)
  # Numerics and memory.
  dtype: str = "float32"  # compute dtype; params stay in param_dtype (fp32 masters)
  param_dtype: str = "float32"  # dtype of the stored parameters (the fp32 masters by default)
  # FP8 (e4m3) GEMMs with 1x128 activation / 128x128 weight scaling (DeepSeek-V3) for the dense
  # projections and the experts; norms, attention core, router, embeddings and head stay in `dtype`.
  fp8: bool = False
  remat: str = "none"  # rematerialisation of each layer: one of REMAT_POLICIES, or "auto" (the planner picks)
  freeze: tuple[str, ...] = ()  # parts that do not train: "vision", "projector", "language_model"
  vision: VisionConfig = VisionConfig()
  # Kernel choices travel with the model so modules need no global state (from `kernels.*`).
  attention_impl: str = "auto"
  gmm_impl: str = "auto"
  fp8_impl: str = "auto"

  @classmethod
  def from_config(cls, model: Any, kernels: Any = None) -> "ModelConfig":
    values = dict(model.to_dict() if isinstance(model, ConfigDict) else model)
    values.pop("init_from", None)
    rope = values.pop("rope_scaling", None) or {}
    rope = dict(rope.to_dict() if isinstance(rope, ConfigDict) else rope)
    vision = values.pop("vision", None) or {}
    vision = dict(vision.to_dict() if isinstance(vision, ConfigDict) else vision)
    if "deepstack_layers" in vision:
      vision["deepstack_layers"] = tuple(vision["deepstack_layers"])
    for key in ("layer_types", "mlp_only_layers", "mrope_section", "freeze"):
      values[key] = tuple(values.get(key, ()))
    if kernels is not None:
      values["attention_impl"] = kernels["attention"]
      values["gmm_impl"] = kernels["gmm"]
      values["fp8_impl"] = kernels.get("fp8", "auto")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown model fields {sorted(unknown)}")
    return cls(rope_scaling=RopeScaling(**rope), vision=VisionConfig(**vision), **values)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def fp8_gemms(self) -> str | None:
    """The FP8 implementation the projections use, or None (compute dtype GEMMs)."""
    return self.fp8_impl if self.fp8 else None

  @property
  def rope_dim(self) -> int:
    """Dimensions the rotary embedding rotates per head."""
    return self.qk_rope_head_dim if self.attention == "mla" else self.resolved_head_dim

  @property
  def has_router_state(self) -> bool:
    """MoE layers carry a score-correction bias (non-trainable model state)."""
    return self.num_experts > 0 and self.router == "sigmoid_group"

  def is_moe_layer(self, index: int) -> bool:
    if self.num_experts <= 0 or index < self.first_k_dense or index in self.mlp_only_layers:
      return False
    return (index + 1) % self.decoder_sparse_step == 0

  def layer_window(self, index: int) -> int:
    if self.layer_types:
      return self.sliding_window if self.layer_types[index] == "sliding_attention" else 0
    return self.sliding_window

  @property
  def deepstack_count(self) -> int:
    """Leading decoder layers that receive DeepStack vision features."""
    return len(self.vision.deepstack_layers) if self.vision.tower == "rope_vit" else 0

  def layer_kinds(self) -> tuple[LayerKind, ...]:
    return tuple(LayerKind(self.is_moe_layer(i), self.layer_window(i), i < self.deepstack_count)
                 for i in range(self.num_layers))

  def stages(self) -> tuple[tuple[tuple[LayerKind, ...], int], ...]:
    """Splits the layers into scanned stages: (unit of layer kinds, repeats).

    A periodic pattern (all alike, dense/MoE alternating, sliding/full alternating) is one
    stage whose unit is the period; otherwise consecutive runs of one kind become stages.
    Compile time then depends on the number of distinct stages, not on depth. DeepStack
    layers (a leading run) are split off first, so the rest keeps its period.
    """
    kinds = self.layer_kinds()
    k = self.deepstack_count
    return _stages(kinds[:k]) + _stages(kinds[k:])

  def layer_location(self, index: int) -> tuple[int, int, int]:
    """Layer index -> (stage, repeat, slot within the unit)."""
    start = 0
    for s, (unit, repeats) in enumerate(self.stages()):
      size = len(unit) * repeats
      if index < start + size:
        offset = index - start
        return s, offset // len(unit), offset % len(unit)
      start += size
    raise IndexError(f"layer {index} out of range for {self.num_layers} layers")


def _stages(kinds: tuple[LayerKind, ...]) -> tuple[tuple[tuple[LayerKind, ...], int], ...]:
  """Scanned stages of a run of layers (see `ModelConfig.stages`)."""
  n = len(kinds)
  if not n:
    return ()
  for period in range(1, n + 1):
    if n % period == 0 and all(kinds[i] == kinds[i % period] for i in range(n)):
      if period < n or n == 1:
        return ((kinds[:period], n // period),)
      break
  stages: list[tuple[tuple[LayerKind, ...], int]] = []
  for kind in kinds:
    if stages and stages[-1][0] == (kind,):
      stages[-1] = ((kind,), stages[-1][1] + 1)
    else:
      stages.append(((kind,), 1))
  return tuple(stages)


_FROM_KERNELS_SECTION = ("attention_impl", "gmm_impl", "fp8_impl")


def rope_defaults() -> ConfigDict:
  return ConfigDict(dataclasses.asdict(RopeScaling()))


def defaults() -> ConfigDict:
  """The `model` section: every ModelConfig field (kernel choices live in `kernels.*`) plus
  `init_from`, an HF directory or jaxtrain checkpoint to start from ("" = random init)."""
  base = ModelConfig()
  values = {f.name: getattr(base, f.name) for f in dataclasses.fields(ModelConfig)
            if f.name not in _FROM_KERNELS_SECTION}
  values["rope_scaling"] = rope_defaults()
  values["vision"] = vision_defaults()
  return ConfigDict({
      "init_from": "",  # HF directory or jaxtrain checkpoint / workdir to start from ("" = random init)
      **values,
  })


def vision_defaults() -> ConfigDict:
  """The `model.vision` sub-section (VisionConfig; tower "none" = a text-only model)."""
  return ConfigDict(dataclasses.asdict(VisionConfig()))


def kernels_defaults() -> ConfigDict:
  """The `kernels` section: the implementation of each heavy op (see `jaxtrain.kernels`)."""
  return ConfigDict({
      "attention": "auto",  # xla | pallas | cudnn | chunked | auto (measured best for the platform)
      "gmm": "auto",  # MoE grouped matmul: xla (ragged_dot) | blocked | pallas | auto
      # model.fp8 GEMMs: emulated (quantize, dequantize, fp32 matmul; any backend) | native (GPU FP8) | auto
      "fp8": "auto",
  })


def validate(config: ConfigDict) -> None:
  """The `model` and `kernels` sections."""
  m = config.model
  require(m.num_layers >= 1, "model.num_layers", f"must be >= 1, got {m.num_layers}")
  require(m.num_heads % max(m.num_kv_heads, 1) == 0 and m.num_kv_heads >= 1, "model.num_kv_heads",
          f"num_heads={m.num_heads} must be a multiple of num_kv_heads={m.num_kv_heads}")
  require(m.head_dim > 0 or m.hidden_size % m.num_heads == 0, "model.head_dim",
          f"0 needs hidden_size={m.hidden_size} divisible by num_heads={m.num_heads}")
  require(m.remat in REMAT_POLICIES or is_auto(m.remat), "model.remat",
          f"{m.remat!r} is not one of {REMAT_POLICIES} or 'auto' (the planner picks)")
  require(m.moe_impl in MOE_IMPLS, "model.moe_impl", f"{m.moe_impl!r} is not one of {MOE_IMPLS}")
  require(m.router in ROUTERS, "model.router", f"{m.router!r} is not one of {ROUTERS}")
  require(m.activation in ACTIVATIONS, "model.activation", f"{m.activation!r} is not one of {ACTIVATIONS}")
  require(m.rope_scaling.type in ROPE_TYPES, "model.rope_scaling.type",
          f"{m.rope_scaling.type!r} is not one of {ROPE_TYPES}")
  for key in ("dtype", "param_dtype"):
    require(m[key] in ("float32", "bfloat16", "float16"), f"model.{key}",
            f"{m[key]!r} is not one of float32, bfloat16, float16")
  require(m.attention in ATTENTIONS, "model.attention", f"{m.attention!r} is not one of {ATTENTIONS}")
  if m.attention == "mla":
    for key in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
      require(m[key] >= 1, f"model.{key}", f"must be >= 1 for attention='mla', got {m[key]}")
    for key in ("q_lora_rank", "qk_nope_head_dim"):
      require(m[key] >= 0, f"model.{key}", f"must be >= 0, got {m[key]}")
    require(m.qk_rope_head_dim % 2 == 0, "model.qk_rope_head_dim", f"must be even, got {m.qk_rope_head_dim}")
    require(not m.qk_norm, "model.qk_norm", "q/k RMSNorm is not part of MLA; set qk_norm=False")
  require(m.expert_activation in EXPERT_ACTIVATIONS, "model.expert_activation",
          f"{m.expert_activation!r} is not one of {EXPERT_ACTIVATIONS}")
  require(m.swiglu_limit > 0, "model.swiglu_limit", f"must be > 0, got {m.swiglu_limit}")
  require(m.ffn_chunk >= 0, "model.ffn_chunk", f"must be >= 0 (0 = no chunking), got {m.ffn_chunk}")
  require(m.router_bias_update_rate >= 0, "model.router_bias_update_rate",
          f"must be >= 0, got {m.router_bias_update_rate}")
  require(m.seq_aux_loss_weight >= 0, "model.seq_aux_loss_weight", f"must be >= 0, got {m.seq_aux_loss_weight}")
  require(m.routed_scaling_factor > 0, "model.routed_scaling_factor", f"must be > 0, got {m.routed_scaling_factor}")
  if m.num_experts > 0:
    require(1 <= m.num_experts_per_tok <= m.num_experts, "model.num_experts_per_tok",
            f"must be in [1, num_experts={m.num_experts}], got {m.num_experts_per_tok}")
    require(m.decoder_sparse_step >= 1, "model.decoder_sparse_step", "must be >= 1")
    require(m.capacity_factor > 0, "model.capacity_factor", "must be > 0")
    if m.router == "sigmoid_group":
      require(m.n_group >= 1 and m.num_experts % m.n_group == 0, "model.n_group",
              f"must be >= 1 and divide num_experts={m.num_experts}, got {m.n_group}")
      require(m.n_group == 1 or m.num_experts // m.n_group >= 2, "model.n_group",
              f"groups need >= 2 experts each (group score = sum of its top 2), got {m.num_experts // m.n_group}")
      require(1 <= m.topk_group <= m.n_group, "model.topk_group",
              f"must be in [1, n_group={m.n_group}], got {m.topk_group}")
      require(m.num_experts_per_tok <= m.topk_group * (m.num_experts // m.n_group), "model.num_experts_per_tok",
              f"{m.num_experts_per_tok} exceeds the experts in topk_group={m.topk_group} groups of "
              f"{m.num_experts // m.n_group}")
  if m.layer_types:
    require(len(m.layer_types) == m.num_layers, "model.layer_types",
            f"has {len(m.layer_types)} entries for num_layers={m.num_layers}")
    bad = [t for t in m.layer_types if t not in LAYER_TYPES]
    require(not bad, "model.layer_types", f"unknown layer types {bad}; known: {LAYER_TYPES}")
    require("sliding_attention" not in m.layer_types or m.sliding_window > 0, "model.sliding_window",
            "sliding_attention layers need sliding_window > 0")
  require(not m.fp8 or m.moe_impl == "dropless", "model.fp8",
          f"FP8 expert GEMMs run through the dropless grouped matmul; moe_impl={m.moe_impl!r} is not supported")
  for key in ("attention", "gmm", "fp8"):
    require(config.kernels[key] in kernels.implementations(key), f"kernels.{key}",
            f"{config.kernels[key]!r} is not one of {kernels.implementations(key)}")
    require(config.kernels[key] != "tokamax" or tokamax_ops.installed(), f"kernels.{key}",
            f"'tokamax' needs the tokamax package, which is not installed; {tokamax_ops.INSTALL_HINT}")
  bad = [p for p in m.freeze if p not in MODEL_PARTS]
  require(not bad, "model.freeze", f"unknown parts {bad}; choose from {MODEL_PARTS}")
  if m.mrope_section:
    require(all(n >= 0 for n in m.mrope_section) and len(m.mrope_section) == 3, "model.mrope_section",
            f"needs three non-negative counts (temporal, height, width), got {tuple(m.mrope_section)}")
  validate_vision(m)


def validate_vision(m) -> None:
  v = m.vision
  require(v.tower in VISION_TOWERS, "model.vision.tower", f"{v.tower!r} is not one of {VISION_TOWERS}")
  if v.tower == "none":
    bad = [p for p in m.freeze if p != "language_model"]
    require(not bad, "model.freeze", f"{bad} need a vision tower (model.vision.tower is 'none')")
    return
  for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size", "in_channels",
              "spatial_merge_size"):
    require(v[key] >= 1, f"model.vision.{key}", f"must be >= 1, got {v[key]}")
  require(v.hidden_size % v.num_heads == 0, "model.vision.num_heads",
          f"hidden_size={v.hidden_size} is not a multiple of num_heads={v.num_heads}")
  require(v.activation in ACTIVATIONS, "model.vision.activation", f"{v.activation!r} is not one of {ACTIVATIONS}")
  require(v.projector_activation in ACTIVATIONS, "model.vision.projector_activation",
          f"{v.projector_activation!r} is not one of {ACTIVATIONS}")
  require(v.norm in VISION_NORMS, "model.vision.norm", f"{v.norm!r} is not one of {VISION_NORMS}")
  require(v.remat in REMAT_POLICIES, "model.vision.remat", f"{v.remat!r} is not one of {REMAT_POLICIES}")
  require(0 <= v.image_token_id < m.vocab_size, "model.vision.image_token_id",
          f"must be a token id below vocab_size={m.vocab_size}, got {v.image_token_id}")
  require(v.row_capacity >= 0, "model.vision.row_capacity", f"must be >= 0, got {v.row_capacity}")
  if v.tower == "rope_vit":
    require(0 <= v.video_token_id < m.vocab_size, "model.vision.video_token_id",
            f"must be a token id below vocab_size={m.vocab_size}, got {v.video_token_id}")
    require(v.temporal_patch_size >= 1, "model.vision.temporal_patch_size", "must be >= 1")
    side = int(round(v.num_position_embeddings ** 0.5))
    require(side * side == v.num_position_embeddings, "model.vision.num_position_embeddings",
            f"must be a square number, got {v.num_position_embeddings}")
    head_dim = v.hidden_size // v.num_heads
    require(head_dim % 4 == 0, "model.vision.num_heads",
            f"2D rotary positions need head_dim (hidden_size / num_heads = {head_dim}) divisible by 4")
    window = v.spatial_merge_size ** 2
    require(v.row_capacity % window == 0, "model.vision.row_capacity",
            f"{v.row_capacity} patches is not a multiple of the {window} patches one merged token takes")
    bad = [i for i in v.deepstack_layers if not 0 <= i < v.num_layers]
    require(not bad, "model.vision.deepstack_layers", f"{bad} are not tower layers (num_layers={v.num_layers})")
    require(len(v.deepstack_layers) <= m.num_layers, "model.vision.deepstack_layers",
            f"{len(v.deepstack_layers)} DeepStack levels for {m.num_layers} language-model layers")
    require(bool(m.mrope_section), "model.mrope_section", "tower 'rope_vit' needs multimodal rotary positions")
  else:
    grid = v.image_size // v.patch_size
    require(v.image_size % v.patch_size == 0 and grid % v.spatial_merge_size == 0, "model.vision.image_size",
            f"{v.image_size} must be a multiple of patch_size={v.patch_size} x spatial_merge_size="
            f"{v.spatial_merge_size}")
    require(not v.deepstack_layers, "model.vision.deepstack_layers", "only tower 'rope_vit' has DeepStack")
