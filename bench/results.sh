#!/usr/bin/env bash
# Reproduce every number in README.md "Results" and the model card, in one run, on this machine.
#   bench/results.sh            (about 15 minutes on 2 CPU cores)
# Writes bench/results/*.json, the shipped plan + plot, and bench/results/bench.{json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
M=models/gmskip-llava-scenes
PLAN=$M/plans/accuracy-reverse.json
OUT=bench/results
mkdir -p "$OUT" "$M/plans"

# 1. full model on the test split (never used for calibration)
$G evaluate --model $M --split test --n 500 --json | tail -1 > $OUT/eval_full_test.json
# 2. GM-Skip on the val split: reverse strategy, accuracy metric
$G calibrate --model $M --data val --n 200 --metric accuracy --strategy reverse \
    --lambda 0.3 --protect-first 0.25 --min-score-ratio 0.99 --batch-size 40 \
    --out $PLAN --plot $M/plans/accuracy-reverse.png | tee $OUT/calibrate.txt
# 3. the pruned model on the same test scenes
$G evaluate --model $M --plan $PLAN --split test --n 500 --json | tail -1 > $OUT/eval_pruned_test.json
# 4. latency, side by side: HF generate vs torch / ONNX Runtime backends, full vs pruned
$G bench --model $M --plan $PLAN --n 50 --threads 1 --out-dir $OUT --json | tail -1 > /dev/null
cat $OUT/eval_full_test.json $OUT/eval_pruned_test.json
