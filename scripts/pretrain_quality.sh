#!/usr/bin/env bash
# Tiny-scale quality check of issue 2: collect a tiny MT40 dataset, pre-train the tiny DT
# (configs/pretrain/tiny.yaml, ~30 min on one CPU thread), evaluate on every MT40 task.
# Figures of the last run: docs/benchmarks.md, "Pre-training quality".
# Usage: bash scripts/pretrain_quality.sh [run name] [episodes per task for evaluation]
set -euo pipefail
name=${1:-mt40-tiny}
episodes=${2:-10}
export OMP_WAIT_POLICY=PASSIVE
dt-eva collect --tasks mt40 --episodes 40 --noise 0,0.1,0.3,0.5 --out data/mt40-tiny   # resumable: skips done tasks
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} dt-eva pretrain --config configs/pretrain/tiny.yaml \
    name="$name" train.eval_every=0 train.progress=false
dt-eva evaluate --run "runs/$name" --tasks mt40 --episodes "$episodes" --seed 0 --no-progress
