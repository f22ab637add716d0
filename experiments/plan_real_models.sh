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
# Large meshes: the full search over ~100 meshes takes hours on 2 CPU cores (a compile per
# distinct local layer shape), so the mesh is fixed as XTuner V1 runs such models (fsdp only, or
# intra-node expert parallel) and the planner chooses remat, offload, micro-batches and chunks.
FSDP="--as-configured --config.mesh.data=1 --config.mesh.sequence=1 --config.mesh.tensor=1"
plan qwen3_30b_8k_8xH100 --config configs/qwen3_30b_a3b_sft.py --device-kind H100 --devices 8 --config.data.seq_len=8192
plan qwen3_30b_64k_8xH100 --config configs/qwen3_30b_a3b_sft.py --device-kind H100 --devices 8 --config.data.seq_len=65536 --config.train.global_batch=8
plan gpt_oss_120b_8xH100 --config configs/gpt_oss_120b_sft.py --device-kind H100 --devices 8
plan gpt_oss_120b_32xH100 --config configs/gpt_oss_120b_sft.py --device-kind H100 --devices 32
plan qwen3_235b_64k_256xH800_fsdp --config configs/qwen3_235b_a22b_64k.py --device-kind H800 --devices 256 $FSDP --config.mesh.expert=1 --config.mesh.fsdp=256
plan qwen3_235b_64k_64xH800_fsdp --config configs/qwen3_235b_a22b_64k.py --device-kind H800 --devices 64 --config.train.global_batch=64 $FSDP --config.mesh.expert=1 --config.mesh.fsdp=64
plan deepseek_v3_256xH800_ep8 --config configs/deepseek_v3_sft.py --device-kind H800 --devices 256 $FSDP --config.mesh.expert=8 --config.mesh.fsdp=32
plan kimi_k2_256xH800_ep8 --config configs/kimi_k2_sft.py --device-kind H800 --devices 256 $FSDP --config.mesh.expert=8 --config.mesh.fsdp=32
