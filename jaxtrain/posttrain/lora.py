"""LoRA adapters from the `lora` config section: which projections get one, their shapes and
logical axes, attaching them to a model, and their initial values.

Targets use Hugging Face / PEFT module names: q_proj, k_proj, v_proj, o_proj (attention),
gate_proj, up_proj, down_proj (dense MLPs and shared experts; gate_proj and up_proj go together
since jaxtrain fuses them, each still with its own adapter), experts (every routed expert's
gate/up and down weights, one adapter pair per expert computed inside the grouped matmuls) and
router (off by default). A adapters start like PEFT's (Kaiming-uniform, bound 1/sqrt(fan_in)),
B adapters at zero, so a new adapter leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtrain.config import ConfigError
from jaxtrain.models import factory
from jaxtrain.models.adapters import LoRA, LoRAParam

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "experts", "router")
DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,experts"
RANK = "adapter_rank"


@dataclasses.dataclass(frozen=True)
class Site:
  """One adapted weight: `module.<weight>` gets `module.<weight>_lora`."""
  weight: str
  n_in: int  # leading input dims of the weight (after the layer axis and, for experts, the expert axis)
  fused: bool = False  # dense gate_up [E, 2, I]: one adapter per fused projection
  # leading expert axis; gate_up's adapter covers the fused [2, I] output (one A shared by gate
  # and up), as PEFT's `target_parameters` adapter of transformers' fused `gate_up_proj` does
  experts: bool = False


def parse_targets(text: str) -> tuple[str, ...]:
  names = tuple(t.strip() for t in text.split(",") if t.strip())
  for n in names:
    if n not in TARGETS:
      raise ConfigError(f"config lora.targets: unknown target {n!r}; choose from {', '.join(TARGETS)}")
  if ("gate_proj" in names) != ("up_proj" in names):
    raise ConfigError("config lora.targets: gate_proj and up_proj are one fused weight in jaxtrain; target both "
                      "or neither")
  return names


@dataclasses.dataclass(frozen=True)
class Adapters:
  rank: int
  alpha: float
  targets: tuple[str, ...]
  rslora: bool = False
  model_cfg: object = None  # the ModelConfig the adapters are for

  @property
  def scale(self) -> float:
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  @classmethod
  def from_config(cls, lora_cfg, model_cfg) -> "Adapters":
    targets = parse_targets(lora_cfg.targets)
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"} & set(targets)
    if attention and model_cfg.attention == "mla":
      raise ConfigError(f"config lora.targets: {', '.join(sorted(attention))} are GQA attention projections; "
                        "MLA attention (DeepSeek-V3) has no LoRA support yet: target the MLPs and experts")
    return cls(rank=int(lora_cfg.rank), alpha=float(lora_cfg.alpha), targets=targets, rslora=bool(lora_cfg.rslora),
               model_cfg=model_cfg)

  # -- where adapters go ---------------------------------------------------------------------
  def sites(self, block) -> list[tuple[nnx.Module, Site]]:
    t, out = set(self.targets), []
    attn = block.attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      if name in t and hasattr(attn, name):
        out.append((attn, Site(name, 2 if name == "o_proj" else 1)))
    mlps = [block.mlp] if hasattr(block, "mlp") else []
    if hasattr(block, "moe"):
      moe = block.moe
      if "experts" in t:
        out += [(moe, Site("gate_up", 1, experts=True)), (moe, Site("down", 1, experts=True))]
      if "router" in t:
        out.append((moe, Site("router", 1)))
      if hasattr(moe, "shared"):
        mlps.append(moe.shared)
    for mlp in mlps:
      if "gate_proj" in t:
        out.append((mlp, Site("gate_up", 1, fused=True)))
      if "down_proj" in t:
        out.append((mlp, Site("down", 1)))
    return out

  def blocks(self, model):
    for stage in model.stages:
      for block in stage.blocks:
        yield block

  # -- building them -------------------------------------------------------------------------
  def make(self, module: nnx.Module, site: Site, key) -> LoRA:
    w = getattr(module, site.weight)
    shape, axes = tuple(w.get_value().shape), tuple(w.get_metadata()["logical_axes"])
    lead = shape[:len(shape) - len(axes)]  # the stacked layer axis
    dims, r = shape[len(lead):], self.rank
    if site.experts:
      X = dims[0]
      in_dims, out_dims = dims[1:1 + site.n_in], dims[1 + site.n_in:]
      a_shape, a_axes = (X, *in_dims, r), (axes[0], *axes[1:1 + site.n_in], RANK)
      b_shape, b_axes = (X, r, *out_dims), (axes[0], RANK, *axes[1 + site.n_in:])
    elif site.fused:  # [E, 2, I]
      (E, C, I) = dims
      in_dims = (E,)
      a_shape, a_axes = (E, C, r), (axes[0], None, RANK)
      b_shape, b_axes = (C, r, I), (None, RANK, axes[2])
    else:
      in_dims, out_dims = dims[:site.n_in], dims[site.n_in:]
      a_shape, a_axes = (*in_dims, r), (*axes[:site.n_in], RANK)
      b_shape, b_axes = (r, *out_dims), (RANK, *axes[site.n_in:])
    bound = 1.0 / math.sqrt(math.prod(in_dims))
    # fp32 masters whatever the base's dtype: the adapters are what trains
    a = jax.random.uniform(key, lead + a_shape, jnp.float32, -bound, bound)
    b = jnp.zeros(lead + b_shape, jnp.float32)
    return LoRA(LoRAParam(a, logical_axes=a_axes), LoRAParam(b, logical_axes=b_axes), scale=self.scale,
                n_in=site.n_in, fused=site.fused, experts=site.experts)

  def attach(self, model, seed: int = 0):
    """Adds the adapters to `model` in place (and returns it). Raises ConfigError when the
    targets match no weight of the model."""
    key = jax.random.key(seed + 0x10A)
    n = 0
    for block in self.blocks(model):
      for module, site in self.sites(block):
        key, sub = jax.random.split(key)
        setattr(module, f"{site.weight}_lora", self.make(module, site, sub))
        n += 1
    if n == 0:
      raise ConfigError(f"config lora.targets={','.join(self.targets)}: no weight of this model matches")
    return model

  def abstract(self, seed: int):
    """(graphdef of the model with adapters, abstract adapter parameters)."""
    model = nnx.eval_shape(lambda: self.attach(factory.create(self.model_cfg, seed), seed))
    graphdef, adapters, _ = nnx.split(model, LoRAParam, ...)
    return graphdef, adapters

  def init(self, seed: int, shardings):
    """The initial adapters (A random, B zero) in their shardings."""
    def make():
      model = nnx.eval_shape(lambda: factory.create(self.model_cfg, seed))
      return nnx.state(self.attach(model, seed), LoRAParam)

    return jax.jit(make, out_shardings=shardings)()


def split_state(state: nnx.State):
  """(adapters, everything else) of a model's state."""
  return nnx.split_state(state, LoRAParam, ...)


def site_of(path: tuple) -> Site:
  """The adapted weight behind an adapter factor's flat path (`.../<weight>_lora/{a,b}`)."""
  weight = str(path[-2])[:-len("_lora")]
  experts = str(path[-3]) == "moe" and weight in ("gate_up", "down")
  return Site(weight, 2 if weight == "o_proj" else 1, fused=weight == "gate_up" and not experts, experts=experts)


def delta_weight(site: Site, a, b, scale: float):
  """scale * A @ B in the layout of the adapted weight (leading layer / expert axes kept)."""
  if site.fused:
    prod = lambda a_, b_: jnp.einsum("ecr,cri->eci", a_, b_)  # noqa: E731
  else:
    prod = lambda a_, b_: jnp.tensordot(a_, b_, 1)  # noqa: E731
  lead = a.ndim - (site.n_in + 1 + (1 if site.fused else 0)) - (1 if site.experts else 0)
  fn = prod
  for _ in range(lead + (1 if site.experts else 0)):
    fn = jax.vmap(fn)
  return scale * fn(a.astype(jnp.float32), b.astype(jnp.float32))


def adapter_pairs(adapters: nnx.State) -> dict[tuple, tuple]:
  """{base weight path: (site, A, B)} of an adapter state."""
  flat = {path: (v.get_value() if isinstance(v, nnx.Variable) else v) for path, v in nnx.to_flat_state(adapters)}
  out = {}
  for path, value in flat.items():
    if path[-1] == "a":
      site = site_of(path)
      out[path[:-2] + (site.weight,)] = (site, value, flat[path[:-1] + ("b",)])
  return out


def merge(base: nnx.State, adapters: nnx.State, scale: float) -> nnx.State:
  """The base parameters with every adapter folded in: W + scale * A @ B (same dtypes)."""
  pairs = adapter_pairs(adapters)
  items = []
  for path, var in nnx.to_flat_state(base):
    if path in pairs:
      site, a, b = pairs[path]
      w = var.get_value()
      var = var.replace((w.astype(jnp.float32) + delta_weight(site, a, b, scale)).astype(w.dtype))
    items.append((path, var))
  return nnx.from_flat_state(items)
