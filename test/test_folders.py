"""folders.written_in_place: an output folder appears complete or not at all."""

from __future__ import annotations

import pytest

from ros2_gmskip.folders import written_in_place


def test_a_finished_block_replaces_the_folder_and_leaves_no_temp(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'old.txt').write_text('old')
    with written_in_place(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / 'new.txt').write_text('new')
    assert sorted(p.name for p in out.iterdir()) == ['new.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_a_failed_block_keeps_the_old_folder_and_removes_the_temp(tmp_path):
    out = tmp_path / 'sub' / 'out'
    with written_in_place(out) as tmp:          # parent folders are made
        (tmp / 'a.txt').write_text('a')
    with pytest.raises(RuntimeError):
        with written_in_place(out) as tmp:
            (tmp / 'b.txt').write_text('b')
            raise RuntimeError('validation failed')
    assert sorted(p.name for p in out.iterdir()) == ['a.txt']
    assert sorted(p.name for p in out.parent.iterdir()) == ['out']
