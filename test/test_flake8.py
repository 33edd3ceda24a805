"""ament_flake8 with ament's settings and our line length (skipped without ament_flake8)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ('ros2_gmskip', 'test', 'setup.py')]   # not .venv, build, ...


@pytest.mark.linter
def test_flake8():
    main_with_errors = pytest.importorskip('ament_flake8.main').main_with_errors
    rc, errors = main_with_errors(argv=['--linelength', '100'] + PATHS)
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
