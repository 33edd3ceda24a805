#!/usr/bin/env bash
# Reproduce the default model's numbers in docs/results.md and the model card, in one run (rows
# that name another folder of bench/results/ show their own commands).
#   bench/results.sh            (about 35 minutes on 2 CPU cores)
# Writes bench/results/*.json, the shipped plan + plots, and bench/results/bench.{json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
PY=".venv/bin/python"
M=models/gmskip-llava-scenes
PLAN=$M/plans/accuracy-reverse.json
OUT=bench/results
# accuracy on 2000 test scenes: on 500, one accuracy's standard error (~1 pt) is as large as the
# 1-point goal it is compared with
NTEST=2000
mkdir -p "$OUT" "$M/plans"

# 0. the n-gram draft table speculative decoding guesses from (deterministic: rewrites the shipped
#    models/gmskip-llava-scenes/draft_ngrams.json with the same bytes)
$G draft 2>/dev/null > $OUT/draft.txt
# 1. full model on the test split (never used for calibration)
$G evaluate --model $M --split test --n $NTEST --json | tail -1 > $OUT/eval_full_test.json
# 2. GM-Skip on the val split (reverse strategy, accuracy), then the token knobs on top of it
#    (FastV K,R x KV-removal ratio), same floor against the unpruned model
$G calibrate --model $M --data val --n 1000 --metric accuracy --strategy reverse \
    --lambda 0.3 --protect-first 0.25 --min-score-ratio 0.99 --batch-size 40 --tokens \
    --out $PLAN --plot $M/plans/accuracy-reverse.png | tee $OUT/calibrate.txt
# 3. the same test scenes: GM-Skip only, FastV only (on the full model), and GM-Skip + FastV
#    (+ the plan's KV removal). FastV K,R: the plan's (the token search keeps 1,0.5 for the
#    shipped model), else $FASTV (default 1,0.25)
$G evaluate --model $M --plan $PLAN --no-plan-tokens --split test --n $NTEST --json | tail -1 \
    > $OUT/eval_pruned_test.json
PLAN_FASTV=$($PY -c "import json; t=json.load(open('$PLAN'))['tokens'] or {}; f=t.get('fastv'); \
print(f'{f[\"k\"]},{f[\"r\"]}' if f else '')")
FASTV=${PLAN_FASTV:-${FASTV:-1,0.25}}
$G evaluate --model $M --fastv "$FASTV" --split test --n $NTEST --json | tail -1 \
    > $OUT/eval_fastv_test.json
$G evaluate --model $M --plan $PLAN --fastv "$FASTV" --split test --n $NTEST --json | tail -1 \
    > $OUT/eval_combined_test.json
# 4. latency, side by side: HF generate vs torch / ONNX Runtime backends: full, GM-Skip,
#    FastV, GM-Skip + FastV (+ KV removal) (accuracy / CIDEr / GFLOPs on the same 50 frames)
$G bench --model $M --plan $PLAN --fastv "$FASTV" --n 50 --threads 1 --rounds 3 --out-dir $OUT --json \
    | tail -1 > /dev/null
# 5. int4-weight decode steps (export --fused-weights int4) against fp32, all 500 test scenes,
#    GM-Skip alone and GM-Skip + FastV (+ KV removal)
$G bench --model $M --plan $PLAN --fastv "$FASTV" --n 500 --threads 1 \
    --only ort_pruned ort_pruned_int4 ort_combined ort_combined_int4 \
    --out-dir $OUT/int4_test500 --json | tail -1 > /dev/null
# 6. one fused decode step: binding every buffer per step against the prepared StepBinding
$PY bench/decode_step.py --rounds 9 2>/dev/null | grep -v INFO > $OUT/decode_step.txt
# 7. speculative decoding: one run's cost by rows, and decode time by guesses per run
$PY bench/speculative.py --n 40 --rounds 5 2>/dev/null | grep -v INFO > $OUT/speculative.txt
cat $OUT/eval_*_test.json
