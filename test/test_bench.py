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

"""`ros2-gmskip bench` runs configurations side by side and reports ratios, JSON and a chart."""

import json
from pathlib import Path

import pytest
from ros2_gmskip.cli import main


@pytest.mark.slow
def test_bench_hf_vs_torch_backend_same_text(tmp_path, capsys):
    rc = main(['bench', '--only', 'hf_full', 'torch_full', '--n', '2', '--warmup', '0',
               '--threads', '1', '--max-new-tokens', '6', '--out-dir', str(tmp_path), '--json'])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result['configs']) == {'hf_full', 'torch_full'}
    assert result['same_text_as']['torch_full']['hf_full'] == 1.0   # same greedy outputs
    assert result['torch_full_vs_hf'] > 0
    for name, cfg in result['configs'].items():
        assert 0 < cfg['p50_ms'] <= cfg['p90_ms'] <= cfg['max_ms'], name
    assert (tmp_path / 'bench.png').stat().st_size > 1000
    assert json.loads((tmp_path / 'bench.json').read_text())['n'] == 2


def test_bench_fused_and_portable_graphs_of_one_bundle(tiny_model_dir, tiny_pruned_bundle,
                                                       make_plan, tmp_path, capsys, monkeypatch):
    from ros2_gmskip.runtime import defaults
    monkeypatch.setattr(defaults, 'ensure_bundle', lambda *a, **k: tiny_pruned_bundle)
    plan = make_plan(tiny_model_dir, [1, 3], tmp_path / 'plan.json')
    rc = main(['bench', '--model', str(tiny_model_dir), '--plan', str(plan), '--only',
               'ort_pruned', 'ort_pruned_greedy', 'ort_pruned_portable', '--n', '2', '--warmup',
               '0', '--threads', '1',
               '--rounds', '2', '--max-new-tokens', '6', '--out-dir', str(tmp_path), '--json'])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result['configs']) == {'ort_pruned', 'ort_pruned_greedy', 'ort_pruned_portable'}
    assert result['same_text_as']['ort_pruned']['ort_pruned_portable'] == 1.0
    assert result['same_text_as']['ort_pruned']['ort_pruned_greedy'] == 1.0
    assert 'ort_pruned_vs_ort_pruned_greedy = ' in out
    assert result['ort_pruned_vs_ort_pruned_portable'] == pytest.approx(
        result['configs']['ort_pruned']['p50_ms']
        / result['configs']['ort_pruned_portable']['p50_ms'])
    assert 'ort_pruned_vs_ort_pruned_portable = ' in out
    assert result['rounds'] == 2
    for cfg in result['configs'].values():      # 2 rounds of 2 frames, pooled
        assert len(cfg['round_p50_ms']) == 2 and cfg['mean_tokens'] > 0
    assert 'ort_pruned: p50 per round ' in out


def test_readme_table_from_bench_json(tmp_path):
    """bench/readme_table.py renders the README latency table from the numbers of a bench.json."""
    import runpy
    table = runpy.run_path(str(Path(__file__).parents[1] / 'bench' / 'readme_table.py'))['table']
    config = {'p50_ms': 50.0, 'p90_ms': 60.0, 'round_p50_ms': [49.0, 51.0], 'tokens_per_s': 300.0,
              'accuracy': 0.9, 'cider': 8.0, 'gflops': 0.5, 'vs_hf': 0.2, 'tokens': None}
    result = {'n': 50, 'configs': {
        'hf_full': dict(config, vs_hf=1.0), 'ort_full': config,
        'ort_fastv': dict(config, p50_ms=25.0, vs_hf=0.1,
                          tokens={'fastv': {'k': 1, 'r': 0.25, 'seed': 0}}),
        'new_config': dict(config, p50_ms=40.0)}}
    lines = table(result).splitlines()
    assert lines[0].count('|') == 11 and 'accuracy (50)' in lines[0]
    assert lines[2].startswith('| HF `generate`, full model | 50.0 | 60.0 | 49.0, 51.0 | 300.0 | '
                               '1.000 | - |')
    assert '| ONNX Runtime, full (fused decoder, speculative) |' in lines[3]
    assert '| 0.200 | 1 |' in lines[3]
    assert lines[4].startswith(
        '| ONNX Runtime, FastV K=1 R=0.25 (fused segments, speculative) | 25.0 |')
    assert '| 0.100 | 0.500 |' in lines[4]
    assert lines[5].startswith('| new_config | 40.0 |') and '| 0.200 | - |' in lines[5]
