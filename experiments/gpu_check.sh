#!/usr/bin/env bash
# GPU check for jaxtrain: one prepared script that runs unattended on an offline GPU machine, a
# sequence of labelled steps, each under its own timeout, the whole run capped at 590 s (a step
# that would pass the cap gets the time left, or is skipped and says so). Logs and tables land in
# "${OUT:-/tmp/gpu_check}": one <step>.log per step, the benchmark tables (bench_*.md/.json) and
# summary.txt, ready to paste into experiments/RESULTS.md (name the card beside every number).
#
#   bash experiments/gpu_check.sh            # from the project root (or anywhere: it cd's there)
#
# Before a run, on a machine with the package index (the GPU machine has none), fill .whl/ with
# what the GPU image lacks, tokamax (the bar our kernels are measured against) and its small
# dependencies included, and carry .whl with the working tree:
#   bash ../shared/device/prep-wheels.sh tokamax qwix jaxtyping einshape immutabledict typeguard \
#     wadler-lindig tensorboardx
# The wheels are installed first; if that fails the script says so in one line and still runs
# every step that can run (the kernel tests and benchmarks need neither Grain nor ml_collections;
# tokamax rows then read "tokamax not installed").
#
# To add a section: append `step <name> <timeout_s> <command...>` lines before the summary. A
# failing step is recorded and the script goes on; the exit status is 1 if any step failed.

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root
export PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
LOGDIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$LOGDIR"
if ! timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    >"$LOGDIR/wheels.log" 2>&1; then
  echo "gpu_check: could not install .whl/*.whl (see $LOGDIR/wheels.log); going on without Grain/ml_collections/tokamax"
fi

set -uo pipefail
SUMMARY="$LOGDIR/summary.txt"
: > "$SUMMARY"
FAILED=()
CAP=590  # seconds for the whole script

# step NAME TIMEOUT_S CMD...: runs CMD under `timeout` (cut to the time left under CAP), logs to
# $LOGDIR/NAME.log, shows its tail, and records the outcome in summary.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((CAP - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "=== [$name] SKIPPED (${left}s left of ${CAP}s)" | tee -a "$SUMMARY"
    FAILED+=("$name")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] timeout ${limit}s: $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$LOGDIR/$name.log"
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED"; fi
  [ "$status" = ok ] || FAILED+=("$name")
  echo "=== [$name] $status (rc=$rc) in $((SECONDS - t0))s" | tee -a "$SUMMARY"
}

# --- setup ------------------------------------------------------------------------------------
step install 45 python3 -m pip install -q --no-deps --no-build-isolation -e .
step env 20 python3 -c "
import importlib.util, jax
from jaxtrain.kernels import pallas_backend as pb
print('jax', jax.__version__, jax.devices(), 'compute capability', pb.compute_capability())
print('our GPU kernels:', pb.gpu_kernel_backend(), '| importable:',
      {m: importlib.util.find_spec(m) is not None for m in ('grain', 'ml_collections', 'tokamax', 'torch')})
assert jax.default_backend() == 'gpu', 'no GPU backend'"

# --- kernels: the CI tests compiled instead of interpreted (Mosaic GPU gmm on sm_90, Triton gmm and
# flash attention, FP8 GEMMs, tokamax adapter), plus the compiled_only realistic shapes.
# JAX_PLATFORMS=cuda: tests/conftest.py defaults JAX_PLATFORMS to cpu for CI.
step kernels_tests 100 env JAX_PLATFORMS=cuda JAXTRAIN_PALLAS_INTERPRET=0 python3 -m pytest tests/kernels -q -rfEs \
  -p no:cacheprovider
# gmm: mosaic / triton / tokamax / ragged_dot / dense of equal FLOPs at Qwen3-30B-A3B and DeepSeek-V3
# expert shapes; attention: ours / cuDNN / tokamax / XLA at T = 4k, 8k, 32k. Writes bench_kernels.{md,json}
# and the auto-table rows for kernels/auto_table.py.
step kernels_bench 100 env JAXTRAIN_PALLAS_INTERPRET=0 python3 experiments/bench_kernels.py --budget-s 0.5 --iters 5 \
  --out "$LOGDIR"

# --- training throughput, bf16 and FP8, next to transformers + PyTorch eager on the same card -------
# MFU against the bf16 peak for every row. Each framework in its own process with its own timeout;
# the table is rewritten after each one, so a timeout keeps the rows measured before it.
step train_dsv3_moe 115 python3 experiments/bench_train.py --preset gpu-dsv3-moe \
  --frameworks jaxtrain,jaxtrain-fp8,torch-eager --steps 4 --warmup 2 --timeout 36 --out "$LOGDIR"
step train_dense_1b 100 python3 experiments/bench_train.py --preset gpu-dense-1b \
  --frameworks jaxtrain,jaxtrain-fp8,torch-eager --steps 4 --warmup 2 --timeout 32 --out "$LOGDIR"

# --- expert-parallel exchange: ragged (lax.ragged_all_to_all; XLA:CPU lacks it, so only here) vs
# padded through the shard_map exchange on a 1-device mesh, the sharded attention wrapper, and 3
# train steps of the tiny MoE model.
step expert_exchange 60 env JAX_PLATFORMS=cuda JAXTRAIN_PALLAS_INTERPRET=0 python3 experiments/gpu_ep_check.py

# --- issue 14: batched decoding vs transformers generate(), bf16; writes bench_sampler_gpu-moe.json ---
step sampler_bench 120 python3 experiments/bench_sampler.py --preset gpu-moe --batch 32 --new-tokens 256 \
  --out "$LOGDIR"

# --- issue 13: vision-language training throughput (Qwen3-VL-MoE-style, 16 images of 448 px per row) -
# Writes bench_train_gpu-vlm.{md,json}, with the vision tower's forward + backward time.
step vlm_bench 180 python3 experiments/bench_train.py --preset gpu-vlm --frameworks jaxtrain,torch-eager \
  --steps 5 --warmup 2 --timeout 85 --out "$LOGDIR"

# --- later sections go here ---------------------------------------------------------------------

# --- summary ----------------------------------------------------------------------------------
echo "=== summary ($LOGDIR, ${SECONDS}s)"
cat "$SUMMARY"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
