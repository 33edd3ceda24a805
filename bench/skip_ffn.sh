#!/usr/bin/env bash
# Skip-FFN (Skip-Vision, arXiv 2503.21817) training against normal training: the same data, steps
# and seed, trained one after the other on this machine, then evaluated on the same test scenes
# (plain decoding, and with the matching visual KV removal at inference).
#   bench/skip_ffn.sh        (about 25 minutes on 2 CPU cores)
# Writes bench/results/skip_ffn.json; the two models go to a temporary folder (not kept).
set -euo pipefail
cd "$(dirname "$0")/.."
G=".venv/bin/ros2-gmskip"
PY=".venv/bin/python"
RATIO=${RATIO:-0.75}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the recipe bench/results/skip_ffn.json was measured with: plain LayerDrop, no early exit, no
# image-blind answers (pinned, so a change of the train defaults cannot change this comparison)
ARGS="--scenes 4000 --vision-steps 400 --steps 300 --eval-every 0 --seed 0 --drop-suffix 0"
ARGS="$ARGS --blind-answers 0"
$G train --out "$WORK/normal" $ARGS | tail -1
$G train --out "$WORK/skip_ffn" $ARGS --skip-ffn "$RATIO" | tail -1
for m in normal skip_ffn; do
    $G evaluate --model "$WORK/$m" --split test --n 500 --json | tail -1 > "$WORK/$m-plain.json"
    $G evaluate --model "$WORK/$m" --kv-removal "$RATIO" --split test --n 500 --json | tail -1 \
        > "$WORK/$m-kv.json"
done
$PY - "$WORK" "$RATIO" <<'PYEOF'
import json, sys
from pathlib import Path
work, ratio = Path(sys.argv[1]), float(sys.argv[2])
out = {'ratio': ratio, 'command': 'bench/skip_ffn.sh', 'runs': {}}
for m in ('normal', 'skip_ffn'):
    s = json.loads((work / m / 'training_log.json').read_text())['summary']
    run = {k: s[k] for k in ('train_seconds', 'stage2_seconds', 'ffn_rows_computed',
                             'ffn_rows_total', 'final_loss')}
    run['train_config'] = s['train_config']
    for kind in ('plain', 'kv'):
        e = json.loads((work / f'{m}-{kind}.json').read_text())
        run[f'test_{kind}'] = {k: e[k] for k in ('accuracy', 'cider', 'exact_match', 'n')}
    out['runs'][m] = run
n, k = out['runs']['normal'], out['runs']['skip_ffn']
out['stage2_time_ratio'] = k['stage2_seconds'] / n['stage2_seconds']
out['ffn_rows_ratio'] = k['ffn_rows_computed'] / n['ffn_rows_computed']
Path('bench/results/skip_ffn.json').write_text(json.dumps(out, indent=1) + '\n')
print(json.dumps(out, indent=1))
PYEOF
