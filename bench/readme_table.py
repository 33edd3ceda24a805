# Copyright 2026 ros2_gmskip developers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
Print the README "Results" latency table from a bench.json, so the table is the file's numbers.

    .venv/bin/python bench/readme_table.py bench/results/bench.json

Rows follow the file's configuration order; a configuration this script has no label for is shown
by its name. "vs its full model" is the p50 ratio to the same backend's fp32 full model (as bench's
`<config>_vs_<backend>_full` keys; HF: -).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    'hf_full': 'HF `generate`, full model',
    'torch_full': 'torch backend, full',
    'torch_pruned': 'torch backend, GM-Skip',
    'torch_fastv': 'torch backend, FastV {fastv}',
    'torch_combined': 'torch backend, GM-Skip + FastV',
    'ort_full': 'ONNX Runtime, full (fused decoder, speculative)',
    'ort_pruned': "**ONNX Runtime, GM-Skip** (fused decoder, speculative: the node's default)",
    'ort_pruned_greedy': 'ONNX Runtime, GM-Skip, one token per decoder run (`--draft-tokens 0`)',
    'ort_pruned_portable': 'ONNX Runtime, GM-Skip, portable `decoder.onnx`',
    'ort_pruned_int4': 'ONNX Runtime, GM-Skip, quantized (`export --fused-weights int4`: int8 '
                       'prefill, int4 decode steps; opt-in)',
    'ort_fastv': 'ONNX Runtime, FastV {fastv} (fused segments, speculative)',
    'ort_combined': 'ONNX Runtime, GM-Skip + FastV (fused segments, speculative)',
    'ort_combined_int4': '**ONNX Runtime, GM-Skip + FastV, quantized** (opt-in)',
    'trt_full': 'TensorRT, full',
    'trt_pruned': 'TensorRT, GM-Skip',
}
HEADER = ('| configuration | p50 ms | p90 ms | p50 per round | tokens/s | vs HF generate | '
          'vs its full model | accuracy ({n}) | CIDEr-D ({n}) | decoder GFLOPs |')


def full_ratio(result: dict, name: str) -> str:
    """p50 over the same backend's full model's p50: '1' for that model, '-' for HF / none."""
    backend = name.split('_')[0]
    full = result['configs'].get(f'{backend}_full')
    if backend == 'hf' or full is None:
        return '-'
    if name == f'{backend}_full':
        return '1'
    return f'{result["configs"][name]["p50_ms"] / full["p50_ms"]:.3f}'


def fastv_label(result: dict) -> str:
    """'K=1 R=0.25' from the first FastV-only configuration's token settings ('' without one)."""
    for name in ('ort_fastv', 'torch_fastv'):
        fastv = ((result['configs'].get(name) or {}).get('tokens') or {}).get('fastv')
        if fastv:
            return f'K={fastv["k"]} R={fastv["r"]:g}'
    return ''


def table(result: dict) -> str:
    fastv = fastv_label(result)
    lines = [HEADER.format(n=result['n']), '|' + '---|' * 10]
    for name, c in result['configs'].items():
        label = LABELS.get(name, name).format(fastv=fastv)
        rounds = ', '.join(f'{v:.1f}' for v in c.get('round_p50_ms', []))
        lines.append(
            f'| {label} | {c["p50_ms"]:.1f} | {c["p90_ms"]:.1f} | {rounds} | '
            f'{c["tokens_per_s"]:.1f} | {c["vs_hf"]:.3f} | {full_ratio(result, name)} | '
            f'{c["accuracy"]:.2f} | {c["cider"]:.2f} | {c["gflops"]:.3f} |')
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('bench_json', type=Path, help='bench.json written by ros2-gmskip bench')
    args = parser.parse_args()
    print(table(json.loads(args.bench_json.read_text())))


if __name__ == '__main__':
    main()
