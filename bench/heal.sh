#!/usr/bin/env bash
# Healing (`ros2-gmskip heal`), measured: a 10-block GM-Skip plan (search floor lowered to 0.96
# because healing gives accuracy back) fine-tuned with FastV K=1 R=0.5 on, then
#  - test accuracy on 5000 scenes (one accuracy's standard error near 0.95 is ~0.3 pt), with and
#    without FastV, next to bench/test5000.sh's full model;
#  - latency side by side with the full model in one bench run;
#  - two controls: the full model given the same 400 steps (does healing only add training?), and
#    the shipped 9-block plan healed with visual KV removal on (`--kv-removal 1`);
#  - two variants: the shipped 9-block plan healed with FastV R=0.5 and R=0.75.
# The second bench runs of bench/results/heal/ (bench_run2.json, bench_plan9_r075_run2.json) are
# the same bench commands run once more.
#   bench/heal.sh    (about 2 hours on 2 CPU cores; writes bench/results/heal/)
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
M=models/gmskip-llava-scenes
H=models/gmskip-llava-scenes-healed
P=$M/plans/accuracy-reverse-for-healing.json
O=bench/results/heal
T=${TMPDIR:-/tmp}/gmskip-heal-controls
mkdir -p $O $T
[ -f $P ] || $G calibrate --model $M --data val --n 1000 --metric accuracy --strategy reverse \
    --lambda 0.3 --protect-first 0.25 --min-score-ratio 0.96 --max-sparsity 0.625 \
    --batch-size 40 --no-progress --out $P --plot ${P%.json}.png | tee $O/calibrate.txt
[ -f $H/gmskip_heal.json ] || $G heal --model $M --plan $P --fastv 1,0.5 --out $H \
    --plot $O/heal.png
$G evaluate --model $H --plan $H/plans/healed.json --split test --n 5000 --json | tail -1 \
    > $O/eval_healed_combined.json
$G evaluate --model $H --plan $H/plans/healed.json --no-plan-tokens --split test --n 5000 \
    --json | tail -1 > $O/eval_healed_pruned.json
$G bench --model $M --pruned-model $H --n 50 --threads 1 --rounds 3 \
    --only hf_full torch_full torch_combined ort_full ort_pruned ort_combined ort_combined_int4 \
    --out-dir $O | tee $O/bench.txt
# control 1: the full model, 400 more steps of the same recipe (a plan that removes nothing)
.venv/bin/python - $M $T/plan_none.json <<'PY'
import json, sys
from ros2_gmskip.gmskip.plan import weights_sha256
m, out = sys.argv[1:]
json.dump({'format': 'ros2_gmskip/skip-plan@1', 'stack': 'decoder', 'removed_blocks': [],
           'model': {'path': m, 'sha256': weights_sha256(m), 'family': 'llava', 'num_blocks': 16},
           'metric': {'name': 'accuracy', 'baseline': 0.0, 'final': 0.0}, 'objective': {'lambda': 0},
           'strategy': 'none', 'protect_first': 0, 'trajectory': [], 'evaluations': 0,
           'tokens': None, 'created_by': 'bench/heal.sh'}, open(out, 'w'))
PY
$G heal --model $M --plan $T/plan_none.json --out $T/full_400 --force
$G evaluate --model $T/full_400 --split test --n 5000 --json | tail -1 > $O/eval_control_full.json
# control 2: the shipped plan healed with visual KV removal (answers blind to the image keys)
$G heal --model $M --fastv 1,0.5 --kv-removal 1 --out $T/kv --force
$G evaluate --model $T/kv --plan $T/kv/plans/healed.json --split test --n 5000 --json | tail -1 \
    > $O/eval_control_kv.json
# variants: the shipped 9-block plan healed with FastV R=0.5 (its own) and R=0.75
for r in 0.5 0.75; do
    tag=plan9$([ $r = 0.75 ] && echo _r075 || true)
    $G heal --model $M --fastv 1,$r --out $T/$tag --force
    cp $T/$tag/gmskip_heal.json $O/${tag}_gmskip_heal.json
    $G evaluate --model $T/$tag --plan $T/$tag/plans/healed.json --split test --n 5000 --json \
        | tail -1 > $O/eval_${tag}_healed_combined.json
    $G bench --model $M --pruned-model $T/$tag --n 50 --threads 1 --rounds 3 \
        --only hf_full torch_full torch_combined ort_full ort_pruned ort_combined \
        --out-dir $T/bench_$tag && cp $T/bench_$tag/bench.json $O/bench_$tag.json
done
$G evaluate --model $T/plan9 --plan $T/plan9/plans/healed.json --no-plan-tokens --split test \
    --n 5000 --json | tail -1 > $O/eval_plan9_healed_pruned.json
cp $T/full_400/gmskip_heal.json $O/control_full_gmskip_heal.json
cp $T/kv/gmskip_heal.json $O/control_kv_gmskip_heal.json
cat $O/eval_*.json
