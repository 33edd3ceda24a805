"""`ros2-gmskip bench` runs configurations side by side and reports ratios, JSON and a chart."""

import json

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
               'ort_pruned', 'ort_pruned_portable', '--n', '2', '--warmup', '0', '--threads', '1',
               '--rounds', '2', '--max-new-tokens', '6', '--out-dir', str(tmp_path), '--json'])
    assert rc == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result['configs']) == {'ort_pruned', 'ort_pruned_portable'}
    assert result['same_text_as']['ort_pruned']['ort_pruned_portable'] == 1.0
    assert result['ort_pruned_vs_ort_pruned_portable'] == pytest.approx(
        result['configs']['ort_pruned']['p50_ms']
        / result['configs']['ort_pruned_portable']['p50_ms'])
    assert 'ort_pruned_vs_ort_pruned_portable = ' in out
    assert result['rounds'] == 2
    for cfg in result['configs'].values():      # 2 rounds of 2 frames, pooled
        assert len(cfg['round_p50_ms']) == 2 and cfg['mean_tokens'] > 0
    assert 'ort_pruned: p50 per round ' in out
