"""What `impl="auto"` picks, per op, platform and device kind.

Each op has rows `(platform, device kind pattern, implementation)`, matched in order against
`jax.default_backend()` and `jax.devices()[0].device_kind` (fnmatch patterns, "*" = any;
platform "*" covers platforms not listed; only for choices that are the reference's equal, since
an unmeasured platform should get the reference). A row must come from a measurement:
`experiments/bench_kernels.py` prints the fastest implementation per device kind in this
format ("auto table" at the end of its report); paste its rows above the generic ones, with the
date and RESULTS.md section in a comment. `tgmm` always follows `gmm` (one kernel family per
run).

Rows and where they come from:
- cpu, gmm "blocked": experiments/RESULTS.md "One MoE layer" (blocked beats ragged_dot,
  which XLA:CPU lowers to a dense masked matmul, by the number of groups).
- cpu, attention "chunked": RESULTS.md "Chunked attention vs the XLA reference" (faster than
  the reference from T=512 on, O(T) memory). Other platforms (TPU, NPU plugins) have no row
  until measured: they get the reference, with one log line ("chunked" runs there too and is
  one config key away).
- gpu: not measured yet (no GPU run so far). "pallas" is our kernel family for the device
  (Mosaic GPU on sm_90 with JAX >= 0.11, Triton elsewhere; `pallas_backend.gpu_kernel_backend`):
  the only GPU choice with O(T) attention memory and every feature of the contract, and a
  grouped matmul that costs the active FLOPs only. `bash experiments/gpu_check.sh` produces the
  rows that replace these guesses.
"""

from __future__ import annotations

AUTO: dict[str, list[tuple[str, str, str]]] = {
    "gmm": [
        ("cpu", "*", "blocked"),
        ("gpu", "*", "pallas"),
    ],
    "attention": [
        ("gpu", "*", "pallas"),
        ("cpu", "*", "chunked"),
    ],
    # FP8 GEMMs: real FP8 dot_general where the hardware has it; the exact emulation elsewhere.
    "fp8": [
        ("gpu", "*", "native"),
        ("*", "*", "emulated"),
    ],
}
AUTO["tgmm"] = AUTO["gmm"]
