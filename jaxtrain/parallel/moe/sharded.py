"""Expert parallel under the ambient mesh: how one MoE call lays out over the mesh (`layout`),
and the `shard_map` that runs a per-device dispatcher (`ExpertParallel`).

Each device routes its own tokens; the inner dispatcher moves copies to the devices owning
their experts (`mesh.expert` axis) and back. Expert weights enter gathered over fsdp (ZeRO-3:
the gather happens at this op) and with their `moe_mlp` dimension split over `tensor`, whose
partial sums are added with one psum.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
from jax.sharding import PartitionSpec

from jaxtrain.parallel import collectives as col
from jaxtrain.parallel.moe.protocol import Dispatcher, ExpertFFN, Routing
from jaxtrain.parallel.rules import current_rules, logical_to_spec

log = logging.getLogger("jaxtrain.parallel")
_logged: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one MoE call is laid out over the ambient mesh."""
  token_axes: tuple[str, ...]  # the token dimension's mesh axes (batch and sequence axes)
  ep_axes: tuple[str, ...]  # mesh axes the experts are split over (the exchange group)
  tp_axes: tuple[str, ...]  # mesh axes the expert hidden dimension is split over
  ep_size: int


def _log_once(message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    log.info(message)


def layout(num_tokens: int, hidden: int, gate_up_shape, down_shape, exchange: str) -> Layout | None:
  """The shard_map layout for the ambient mesh, or None to run on this device's view (no
  mesh, a single device with exchange "auto", or token counts that do not split over the mesh:
  then the SPMD partitioner shards the local computation)."""
  mesh = col.ambient_mesh()
  if mesh is None or (col.mesh_size(mesh) == 1 and exchange == "auto"):
    return None
  tok = col.spec_entry(logical_to_spec(("act_tokens", None), (num_tokens, hidden), mesh), 0)
  gu = logical_to_spec(("expert", None, None, "moe_mlp"), gate_up_shape, mesh)
  dn = logical_to_spec(("expert", "moe_mlp", None), down_shape, mesh)
  ep, tp = col.spec_entry(gu, 0), col.spec_entry(gu, 3)
  if col.spec_entry(dn, 0) != ep or col.spec_entry(dn, 1) != tp:
    raise ValueError(f"expert weights shard inconsistently: gate_up {gu}, down {dn}")
  if not ep and exchange != "auto":
    # A forced exchange with no expert split (one device, or mesh.expert=1): exchange over the
    # expert rule's (size-1) axes, so the exchange code runs and can be checked on one device.
    rule = current_rules()["expert"]
    ep = tuple(a for a in col.axes_of(rule) if a in mesh.shape and mesh.shape[a] == 1)[:1]
    tok = tok + ep
  if not set(ep) <= set(tok) or set(tp) & set(tok):
    _log_once(f"MoE: {num_tokens} tokens do not split over the expert axes {ep} of mesh {dict(mesh.shape)}; "
              "running dropless under the SPMD partitioner instead of expert parallel")
    return None
  return Layout(token_axes=tok, ep_axes=ep, tp_axes=tp, ep_size=col.size_of(mesh, ep) if ep else 1)


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
  """Runs `inner` on every device's tokens and experts inside one `shard_map`, adds the
  tensor-split partial sums, and sums the per-expert load over the token axes."""
  inner: Dispatcher
  layout: Layout
  checked: bool  # shard_map check_vma: off around kernels that do not type varying axes

  def __call__(self, x, routing: Routing, experts: ExpertFFN):
    lay, checked = self.layout, self.checked
    tok, ep, tp = (col.as_entry(a) for a in (lay.token_axes, lay.ep_axes, lay.tp_axes))
    in_specs = (PartitionSpec(tok, None), PartitionSpec(tok, None), PartitionSpec(tok, None), PartitionSpec(tok),
                PartitionSpec(ep, None, None, tp), PartitionSpec(ep, tp, None))
    args = (x, routing.expert_ids, routing.weights, routing.valid, experts.gate_up, experts.down)
    has_bias, lora = experts.gate_up_bias is not None, experts.lora
    if has_bias:
      in_specs += (PartitionSpec(ep, None, tp),)
      args += (experts.gate_up_bias,)
    if lora is not None:  # A's input dims and B's output dims split like the weights they adapt
      in_specs += (PartitionSpec(ep, None, None), PartitionSpec(ep, None, None, tp), PartitionSpec(ep, tp, None),
                   PartitionSpec(ep, None, None))
      args += lora.arrays()

    def body(x, expert_ids, weights, valid, gate_up, down, *extra):
      gate_up_bias = extra[0] if has_bias else None
      local_lora = None if lora is None else lora.with_arrays(*extra[int(has_bias):])
      local = dataclasses.replace(experts, gate_up=gate_up, down=down, gate_up_bias=gate_up_bias, checked=checked,
                                  lora=local_lora)
      out, counts = self.inner(x, Routing(expert_ids, weights, valid), local)
      if lay.tp_axes:
        out = jax.lax.psum(out, col.axis_name(lay.tp_axes))  # partial sums over the split hidden dim
      load = jax.lax.psum(counts, col.axis_name(lay.token_axes)) if lay.token_axes else counts
      return out, load

    fn = col.shard_map(body, mesh=col.ambient_mesh(), check=checked, in_specs=in_specs,
                       out_specs=(PartitionSpec(tok, None), PartitionSpec()))
    return fn(*args)
