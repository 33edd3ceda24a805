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
