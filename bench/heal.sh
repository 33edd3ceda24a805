#!/usr/bin/env bash
# Healing (`ros2-gmskip heal`): the shipped plan's 7-block model fine-tuned with FastV K=1 R=0.5
# on, then measured like bench/test5000.sh (5000 test scenes: one accuracy's standard error near
# 0.95 is ~0.3 pt) and timed side by side with the full model in one bench run.
#   bench/heal.sh [OUT]   (default OUT: models/gmskip-llava-scenes-healed; about 30 min on 2 cores;
#                          writes bench/results/heal/)
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
M=models/gmskip-llava-scenes
H=${1:-models/gmskip-llava-scenes-healed}
O=bench/results/heal
mkdir -p $O
[ -f $H/gmskip_heal.json ] || $G heal --model $M --plan $M/plans/accuracy-reverse.json --out $H
$G evaluate --model $H --plan $H/plans/healed.json --split test --n 5000 --json | tail -1 \
    > $O/eval_healed_combined.json
$G evaluate --model $H --plan $H/plans/healed.json --no-plan-tokens --split test --n 5000 \
    --json | tail -1 > $O/eval_healed_pruned.json
cat $O/eval_*.json
$G bench --model $M --pruned-model $H --n 50 --threads 1 --rounds 3 \
    --only hf_full ort_full ort_pruned ort_combined ort_combined_int4 torch_full torch_combined \
    --out-dir $O | tee $O/bench.txt
