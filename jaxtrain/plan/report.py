"""The planner's report: the recommendation with its memory breakdown and step time, the other
viable candidates and why each loses, and what did not fit (with what would make it fit)."""

from __future__ import annotations

from jaxtrain.plan.memory import Memory, gib
from jaxtrain.plan.planner import Option, Plan


def _pct(a: float, b: float) -> str:
  return f"{100 * (a / b - 1):+.0f}%"


def breakdown(m: Memory) -> list[tuple[str, int]]:
  rows = [("parameters (fp32 masters)", m.params), ("gradients", m.grads), ("optimizer state (AdamW)", m.opt_state)]
  for kind, per_layer in m.saved_per_layer:
    rows.append((f"saved activations per {kind} layer", per_layer))
  rows += [("saved activations, all layers", m.saved), ("largest layer's backward working set", m.layer_work),
           ("  of which MoE dispatch buffers (worst routing)", m.moe_dispatch),
           ("  of which weights + gradients gathered over fsdp", m.gathered_weights),
           ("logits / loss (one vocabulary chunk)", m.loss), ("embeddings, rotary tables, invariants", m.invariant),
           ("batch", m.batch), ("optimizer update temporaries", m.update)]
  if m.host:
    rows.append(("activations offloaded to host memory", m.host))
  return rows


def why_loses(option: Option, best: Option) -> str:
  reasons = []
  a, b = option.candidate, best.candidate
  slower = _pct(option.step, best.step)
  t, tb = option.time, best.time
  if a.remat != b.remat:
    reasons.append(f"remat {a.remat} recomputes more" if t.compute > tb.compute else f"remat {a.remat}")
  if a.ffn_chunk and a.ffn_chunk != b.ffn_chunk:
    reasons.append(f"ffn_chunk {a.ffn_chunk} runs the MLP / MoE forward twice")
  if a.micro_batches > b.micro_batches:
    reasons.append(f"{a.micro_batches} micro-batches gather the weights {a.micro_batches}x")
  exposed, exposed_b = sum(t.exposed.values()), sum(tb.exposed.values())
  if exposed > exposed_b * 1.05 + 1e-6:
    worst = max(t.exposed, key=t.exposed.get)
    reasons.append(f"{worst} on the critical path ({1e3 * t.exposed[worst]:.0f} ms)")
  overlapped = sum(t.overlapped.values())
  if overlapped > t.compute and overlapped > sum(tb.overlapped.values()) * 1.05:
    reasons.append(f"communication-bound ({', '.join(sorted(t.overlapped))})")
  if t.compute > tb.compute * 1.05 and a.remat == b.remat:
    reasons.append("more compute per device (rows replicated or recomputed)")
  return f"{slower} step time" + (f": {'; '.join(reasons)}" if reasons else "")


def format_plan(plan: Plan, *, top: int = 8, hints: list[str] | None = None) -> str:
  """The plan as text; `hints` (what would make it fit) go with a plan where nothing fits."""
  w, d = plan.workload, plan.device
  lines = [f"Plan for {w.model.arch}: {_count(plan)} parameters, seq_len {w.seq_len:,}, global batch {w.global_batch} "
           f"({w.tokens_per_step:,} tokens/step) on {plan.devices} x {d.kind} ({gib(d.memory)} each, planning "
           f"with {gib(plan.budget)})"]
  best = plan.best
  if best is None:
    lines.append("")
    lines.append(no_fit_message(plan, hints))
    return "\n".join(lines)
  c, m, t = best.candidate, best.memory, best.time
  lines += ["", f"Recommended: {c.describe()}",
            f"  predicted memory per device: {gib(m.total)} of {gib(plan.budget)}",
            f"  predicted step time: {t.step:.3f} s ({t.tokens_per_sec_per_device:,.0f} tokens/s per device, "
            f"{t.tokens_per_sec:,.0f} tokens/s in all" + (f", MFU {100 * t.mfu(d.peak_flops(w.model.dtype)):.0f}%"
                                                          if d.platform != "cpu" else "") + ")",
            f"  compute {t.compute:.3f} s" + "".join(f"; {k} {v:.3f} s (overlapped)" for k, v in t.overlapped.items())
            + "".join(f"; {k} {v:.3f} s (exposed)" for k, v in t.exposed.items()),
            "", "  memory per device:"]
  for name, value in breakdown(m):
    if value or not name.startswith("  "):
      lines.append(f"    {name:52s} {gib(value):>12s}")
  lines.append(f"    {'peak (state + max(backward, optimizer update))':52s} {gib(m.total):>12s}")
  others = plan.options[1:top]
  if others:
    lines += ["", "Other candidates that fit (and why they lose):",
              "| mesh | remat | micro-batches | loss chunk | ffn chunk | memory | step s | tokens/s/device | vs recommended |",
              "|---|---|---|---|---|---|---|---|---|"]
    for o in others:
      lines.append(f"| {o.candidate.mesh.describe()} | {o.candidate.remat} | {o.candidate.micro_batches} | "
                   f"{o.candidate.vocab_chunk} | {o.candidate.ffn_chunk or '-'} | {gib(o.memory.total)} | {o.step:.3f} | "
                   f"{o.time.tokens_per_sec_per_device:,.0f} | {why_loses(o, best)} |")
  if plan.rejected:
    lines += ["", f"Not viable ({len(plan.rejected)}):"]
    for what, why in plan.rejected[:top]:
      lines.append(f"  {what}: {why}")
    if len(plan.rejected) > top:
      lines.append(f"  ... and {len(plan.rejected) - top} more")
  return "\n".join(lines)


def _count(plan: Plan) -> str:
  from jaxtrain.models import factory
  import jax
  params = factory.abstract_model(plan.workload.model)[1]
  n = sum(int(x.size) for x in jax.tree.leaves(params))
  return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def no_fit_message(plan: Plan, hints: list[str] | None = None) -> str:
  """Says by how much the most frugal candidate misses the budget, and what would make it fit."""
  c = plan.closest
  lines = [f"Nothing fits in {gib(plan.budget)} per device on {plan.devices} x {plan.device.kind}."]
  if c is not None:
    over = c.memory.total - plan.budget
    lines.append(f"The smallest candidate ({c.candidate.describe()}) needs {gib(c.memory.total)} per device, "
                 f"{gib(over)} ({100 * over / plan.budget:.0f}%) more than that: {', '.join(f'{n} {gib(v)}' for n, v in _top(c.memory))}.")
  elif plan.least_state is not None:
    state, mesh = plan.least_state
    # Sharded over more devices the state shrinks in proportion; leave a fifth for activations.
    needed = plan.devices
    while state * plan.devices / needed > 0.8 * plan.budget:
      needed *= 2
    lines.append(f"Parameters, gradients and optimizer state alone need {gib(state)} per device at best "
                 f"(mesh {mesh.describe()}). Full-parameter training needs about {needed} devices of this kind "
                 f"(plan them with --devices {needed}); or train LoRA adapters (lora.rank) with a mesh you set.")
  if hints:
    lines.append("What would make it fit: " + "; ".join(hints) + ".")
  return "\n".join(lines)


def _top(m: Memory) -> list[tuple[str, int]]:
  parts = [("state", m.params + m.opt_state), ("gradients", m.grads), ("saved activations", m.saved),
           ("layer backward", m.layer_work), ("loss", m.loss)]
  return sorted(parts, key=lambda p: -p[1])[:3]


__all__ = ["breakdown", "format_plan", "no_fit_message", "why_loses"]
