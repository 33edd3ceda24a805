#!/usr/bin/env bash
# Early-exit training (`train --drop-suffix 0.5`, otherwise the shipped recipe) and what GM-Skip
# makes of that model: the "early-exit training" row of docs/results.md (not the shipped model).
#   bench/early_exit.sh        (about 70 minutes on 2 CPU cores: 45 of them training)
# Writes bench/results/early_exit/; the model goes to a temporary folder (not kept). Its plan.json
# names the temporary model's sha256, so `prune` / `export` refuse it for the shipped model. The
# committed files came from running these steps by hand (bench with --rounds 2 twice; the second
# run is kept); their `model` fields name the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
OUT=bench/results/early_exit
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
M=$WORK/model
mkdir -p "$OUT"
$G train --out $M --drop-suffix 0.5 | tail -1
cp $M/training_log.json $OUT/
$G evaluate --model $M --split test --n 500 --json | tail -1 > $OUT/eval_full_test.json
# the same search as bench/results.sh step 2
$G calibrate --model $M --data val --n 1000 --metric accuracy --strategy reverse \
    --lambda 0.3 --protect-first 0.25 --min-score-ratio 0.99 --batch-size 40 --tokens \
    --out $OUT/plan.json --plot $OUT/plan.png | tee $OUT/calibrate.txt
$G evaluate --model $M --plan $OUT/plan.json --no-plan-tokens --split test --n 500 --json \
    | tail -1 > $OUT/eval_pruned_test.json
$G evaluate --model $M --plan $OUT/plan.json --split test --n 500 --json | tail -1 \
    > $OUT/eval_combined_test.json
$G bench --model $M --plan $OUT/plan.json --n 50 --threads 1 --rounds 2 \
    --only ort_full ort_pruned ort_combined --out-dir $OUT --json | tail -1 > /dev/null
cat $OUT/eval_*_test.json
