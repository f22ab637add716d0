#!/usr/bin/env bash
# The planner's recommendations for the real models of issue 17 (experiments/RESULTS.md,
# "Plans for real models"). Every run plans with mesh / remat / micro-batches "auto", exactly
# what the trainer does with `--config.mesh=auto --config.model.remat=auto
# --config.train.micro_batches=auto` on those devices. Nothing is downloaded: the configs carry
# the architectures (model.init_from is not read by the planner).
#
#   bash experiments/plan_real_models.sh [OUTDIR]      # one text file per plan + timings
set -uo pipefail
out=${1:-plans}
mkdir -p "$out"
py=${PYTHON:-python}
plan() {  # name, then the planner's arguments
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: python -m jaxtrain.plan $*" | tee "$out/$name.txt"
  $py -m jaxtrain.plan "$@" --top 4 >>"$out/$name.txt" 2>&1  # progress lines included
  echo "(exit $?, $((SECONDS - t0)) s)" | tee -a "$out/$name.txt"
}
plan qwen3_235b_64k_256xH800 --config configs/qwen3_235b_a22b_64k.py --device-kind H800 --devices 256
plan qwen3_235b_64k_64xH800 --config configs/qwen3_235b_a22b_64k.py --device-kind H800 --devices 64 --config.train.global_batch=64
plan deepseek_v3_256xH800 --config configs/deepseek_v3_sft.py --device-kind H800 --devices 256
plan kimi_k2_256xH800 --config configs/kimi_k2_sft.py --device-kind H800 --devices 256
plan gpt_oss_120b_8xH100 --config configs/gpt_oss_120b_sft.py --device-kind H100 --devices 8
plan gpt_oss_120b_32xH100 --config configs/gpt_oss_120b_sft.py --device-kind H100 --devices 32
plan qwen3_30b_8k_8xH100 --config configs/qwen3_30b_a3b_sft.py --device-kind H100 --devices 8 --config.data.seq_len=8192
plan qwen3_30b_64k_8xH100 --config configs/qwen3_30b_a3b_sft.py --device-kind H100 --devices 8 --config.data.seq_len=65536 --config.train.global_batch=8
