"""flake8 (the Python package) on ros2_gmskip/ and test/ with setup.cfg: runs without ROS 2."""

from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.linter
def test_flake8_plain():
    pytest.importorskip('flake8')
    proc = subprocess.run(
        [sys.executable, '-m', 'flake8', '--config', str(REPO / 'setup.cfg'),
         'ros2_gmskip', 'test'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'flake8 found problems:\n{proc.stdout}{proc.stderr}'
