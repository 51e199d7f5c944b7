#!/usr/bin/env bash
# Every fine-tuning method on one CW10 task from a pre-trained tiny DT, two runs at a time (one
# thread each), then the Table 6 / 19 report. Figures of the last run: docs/benchmarks.md,
# "CW10 fine-tuning at tiny scale".
# Usage: bash scripts/finetune_methods.sh <pretrain run dir> [task] [rank] [seed]
# Extra config overrides for every run: EXTRA="train.steps=20 train.eval_episodes=2" (a smoke test).
set -euo pipefail
base=${1:?usage: finetune_methods.sh <pretrain run dir> [task] [rank] [seed]}
task=${2:-hammer}
rank=${3:-8}
seed=${4:-0}
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
dt-eva collect --tasks "$task" --episodes 40 --noise 0,0.1,0.3,0.5 --out "data/cw10-tiny-$task"
run() {
  dt-eva finetune -c configs/finetune/tiny.yaml --checkpoint "$base" --task "$task" --method "$1" \
      --rank "$rank" --rho 2 --seed "$seed" data.path="data/cw10-tiny-$task" \
      train.eval_episodes=20 train.progress=false ${EXTRA:-} > "$base-$task-$1.log" 2>&1
  echo "$1 done ($base-$task-$1.log)"
}
(run fft; run lora; run dora; run olora) &
(run eva; run eva_dora; run pissa; run adalora) &
wait
dt-eva report "$(dirname "$base")" --out "reports/$(basename "$base")-$task"
