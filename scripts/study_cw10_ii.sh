#!/usr/bin/env bash
# Study II (docs/results.md, "Study II"): the learning-rate extension, then the main grid in three phases
# (LoRA + EVA, then DoRA + EVA+DoRA, then FFT), then the reports. Every step is resumable and skips what
# is done, so run it again in a fresh clone to continue: the datasets are re-collected deterministically,
# the base model is study I's committed one, and each sweep keeps the done rows of its committed
# results.csv (and episodes.csv.gz).
#   bash scripts/study_cw10_ii.sh            # 20 validation runs, then 480 main-grid runs (~8-30 h of 2 cores)
#   JOBS=1 bash scripts/study_cw10_ii.sh     # one run at a time (leaves a core free)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg
jobs=${JOBS:-2}
dt-eva collect --tasks cw10 --episodes 40 --noise 0,0.1,0.3,0.5 --out data/cw10-tiny --no-progress
dt-eva collect --tasks cw10 --episodes 8 --noise 0,0.1,0.3,0.5 --seed 1 --out data/cw10-heldout --no-progress
dt-eva sweep configs/sweeps/cw10-ii-validation.yaml --jobs "$jobs" --no-progress
python scripts/study_ii_select_lr.py
for phase in lora-eva dora fft; do   # written once the validation has frozen the learning rates
    if [ -f "configs/sweeps/cw10-ii-$phase.yaml" ]; then
        dt-eva sweep "configs/sweeps/cw10-ii-$phase.yaml" --jobs "$jobs" --no-progress
    fi
done
for out in studies/cw10-ii/*/; do
    if [ -f "$out/results.csv" ]; then dt-eva report "$out" --out "$out/report"; fi
done
dt-eva report studies/cw10-ii --out studies/cw10-ii/report   # the phases pooled, Holm over the three comparisons
