#!/usr/bin/env bash
# GPU check for jaxtrain: one prepared script, a sequence of labelled steps, each with its own
# timeout, logs and tables in "${OUT:-/tmp/gpu_check}" (one <step>.log per step + summary.txt).
# Typical total about 6 minutes on an H100/H200; the timeouts cap it at 10.
#
#   bash experiments/gpu_check.sh            # from the project root (or anywhere: it cd's there)
#
# To add a section: append `step <name> <timeout_s> <command...>` lines before the summary.
# A failing step is recorded and the script goes on; the exit status is 1 if any step failed.

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl && export PYTHONPATH=$PWD:$PWD/.site:$PYTHONPATH \
  || echo "gpu_check: no wheels installed from .whl/ (grain/ml_collections missing); kernel steps do not need them"

set -uo pipefail
LOGDIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$LOGDIR"
SUMMARY="$LOGDIR/summary.txt"
: > "$SUMMARY"
FAILED=()

# step NAME TIMEOUT_S CMD...: runs CMD under `timeout`, logs to $LOGDIR/NAME.log, shows its tail.
step() {
  local name=$1 limit=$2
  shift 2
  echo "=== [$name] timeout ${limit}s: $*"
  local t0=$SECONDS
  timeout --kill-after=15 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$LOGDIR/$name.log"
  local status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT"; elif [ "$rc" -ne 0 ]; then status="FAILED"; fi
  [ "$status" = ok ] || FAILED+=("$name")
  echo "=== [$name] $status (rc=$rc) in $((SECONDS - t0))s" | tee -a "$SUMMARY"
}

# --- setup ------------------------------------------------------------------------------------
step install 90 python3 -m pip install -q --no-deps --no-build-isolation -e .
step env 30 python3 -c "import jax; print('jax', jax.__version__, jax.devices()); assert jax.default_backend() == 'gpu', 'no GPU backend'"

# --- issue 4: Pallas kernels (grouped matmul, flash attention) -------------------------------
# Same tests as CI, compiled instead of interpreted, plus the compiled_only realistic shapes.
# JAX_PLATFORMS=cuda: tests/conftest.py defaults JAX_PLATFORMS to cpu for CI.
step kernels_tests 150 env JAX_PLATFORMS=cuda JAXTRAIN_PALLAS_INTERPRET=0 python3 -m pytest tests/kernels -q -rfEs -p no:cacheprovider
# gmm vs ragged_dot vs dense, attention pallas vs cudnn vs xla; writes bench_kernels.{md,json}.
step kernels_bench 120 env JAXTRAIN_PALLAS_INTERPRET=0 python3 experiments/bench_kernels.py --out "$LOGDIR"

# --- issue 5: expert-parallel exchange -------------------------------------------------------
# ragged (lax.ragged_all_to_all; XLA:CPU lacks it, so only here) vs padded, forced through the
# shard_map exchange on a 1-device mesh: MoE layer forward/gradients, the sharded attention
# wrapper around the Pallas kernel, and 3 train steps of the tiny MoE model. About 1-2 minutes.
step expert_exchange 90 env JAX_PLATFORMS=cuda JAXTRAIN_PALLAS_INTERPRET=0 python3 experiments/gpu_ep_check.py

# --- issue 7: training throughput vs transformers + PyTorch, bf16, MFU ---------------------------
# The 64-expert MoE preset (~0.5B active parameters) at batch 8 x 2048; writes bench_train_gpu-moe.{md,json}.
step train_bench 150 python3 experiments/bench_train.py --preset gpu-moe --frameworks jaxtrain,torch-eager \
  --steps 5 --warmup 2 --timeout 70 --out "$LOGDIR"

# --- issue 13: vision-language training throughput (Qwen3-VL-MoE-style, 16 images of 448 px per row) -
# Writes bench_train_gpu-vlm.{md,json}, with the vision tower's forward + backward time.
step vlm_bench 180 python3 experiments/bench_train.py --preset gpu-vlm --frameworks jaxtrain,torch-eager \
  --steps 5 --warmup 2 --timeout 85 --out "$LOGDIR"

# --- later sections go here ---------------------------------------------------------------------

# --- summary ----------------------------------------------------------------------------------
echo "=== summary ($LOGDIR)"
cat "$SUMMARY"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
