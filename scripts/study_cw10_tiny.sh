#!/usr/bin/env bash
# The CW10 study at CPU scale (docs/results.md): data, base model, the four sweeps, their reports.
# Every step is resumable and skips what is done, so run it again in a fresh clone to continue:
# datasets are re-collected deterministically, the base model is committed under
# studies/cw10-tiny/base/mt40-tiny, and the sweep keeps the done rows of its committed results.csv.
#   bash scripts/study_cw10_tiny.sh     # 186 fine-tuning runs: ~6 h of 2 cores on an AVX2 EPYC, ~3 h on an AMX Xeon
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg
base=studies/cw10-tiny/base/mt40-tiny
dt-eva collect --tasks cw10 --episodes 40 --noise 0,0.1,0.3,0.5 --out data/cw10-tiny --no-progress
dt-eva collect --tasks cw10 --episodes 8 --noise 0,0.1,0.3,0.5 --seed 1 --out data/cw10-heldout --no-progress
if [ ! -f "$base/model.pt" ]; then   # the base: tiny preset on MT40 (~60 min on one core of this machine)
    dt-eva collect --tasks mt40 --episodes 40 --noise 0,0.1,0.3,0.5 --out data/mt40-tiny --no-progress
    resume=$([ -f "$base/checkpoints/last.pt" ] && echo --resume || true)
    OMP_NUM_THREADS=1 dt-eva pretrain --config configs/pretrain/tiny.yaml name=mt40-tiny run_dir="$base" \
        train.eval_every=0 train.progress=false $resume
    dt-eva evaluate --run "$base" --tasks mt40 --episodes 10 --seed 0 --no-progress --threads 1
fi
# 1. each method's learning rate on the validation split; 2. EVA's variants and AdaLoRA's regulariser
# there (at the chosen rates, frozen in their sweep files); 3. the main grid. Then every report.
sweeps=(cw10-tiny-validation cw10-tiny-variants cw10-tiny-adalora cw10-tiny)
for sweep in "${sweeps[@]}"; do
    dt-eva sweep "configs/sweeps/$sweep.yaml" --jobs 2
done
for out in validation variants adalora main; do
    dt-eva report "studies/cw10-tiny/$out" --out "studies/cw10-tiny/$out/report"
done
