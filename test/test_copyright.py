"""ament_copyright over the package sources (skipped where ament_copyright is not installed)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ('ros2_gmskip', 'test', 'setup.py')]   # not .venv, build, ...


@pytest.mark.linter
def test_copyright():
    main = pytest.importorskip('ament_copyright.main').main
    rc = main(argv=PATHS)
    assert rc == 0, 'Found errors'
