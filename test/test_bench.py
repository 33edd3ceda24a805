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
