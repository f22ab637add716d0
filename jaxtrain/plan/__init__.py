"""The memory and speed planner: what fits, and what is fastest, before a device is touched.

    workload  what to run (model, sequence length, global batch) -- from a run config
    candidates  the meshes, remat policies, micro-batch splits and loss chunks to consider
    memory    per-device memory of a candidate (state exact; activations from JAX's autodiff)
    timing    step time (FLOPs model + collectives over the device kind's bandwidths)
    planner   the fastest candidate that fits, and why the others lose
    resolve   `auto` in a run config; refusing configs that cannot fit
    report    the printed plan;  `python -m jaxtrain.plan` is the command line
"""

from jaxtrain.plan.hardware import DEVICES, Device, lookup
from jaxtrain.plan.memory import Memory, predict as predict_memory
from jaxtrain.plan.planner import Option, Plan, make_plan
from jaxtrain.plan.resolve import check_fits, has_auto, resolve_auto
from jaxtrain.plan.workload import Candidate, Workload

__all__ = ["DEVICES", "Candidate", "Device", "Memory", "Option", "Plan", "Workload", "check_fits", "has_auto",
           "lookup", "make_plan", "predict_memory", "resolve_auto"]
