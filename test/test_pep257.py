"""ament_pep257 over the package sources (skipped where ament_pep257 is not installed)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ('ros2_gmskip', 'test')]   # not .venv, build, ...


@pytest.mark.linter
def test_pep257():
    main = pytest.importorskip('ament_pep257.main').main
    rc = main(argv=PATHS)
    assert rc == 0, 'Found code style errors / warnings'
