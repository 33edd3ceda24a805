#!/usr/bin/env bash
# Accuracy of the default model, its GM-Skip plan, FastV and both on 5000 test scenes: one
# accuracy's standard error near 0.95 is ~0.3 pt there (0.5 on 2000), for the 1-point goals.
#   bench/test5000.sh            (about 20 minutes on 2 CPU cores; writes bench/results/test5000/)
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
M=models/gmskip-llava-scenes
PLAN=$M/plans/accuracy-reverse.json
O=bench/results/test5000
mkdir -p $O
$G evaluate --model $M --split test --n 5000 --json | tail -1 > $O/eval_full.json
$G evaluate --model $M --plan $PLAN --no-plan-tokens --split test --n 5000 --json | tail -1 \
    > $O/eval_pruned.json
$G evaluate --model $M --plan $PLAN --split test --n 5000 --json | tail -1 > $O/eval_combined.json
$G evaluate --model $M --fastv 1,0.5 --split test --n 5000 --json | tail -1 > $O/eval_fastv.json
cat $O/eval_*.json
