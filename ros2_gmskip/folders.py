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
Output folders that appear complete or not at all (prune, heal and export write through it).

    with written_in_place(Path('models/pruned')) as tmp:
        model.save_pretrained(tmp)            # an error here leaves `out` as it was

The content is written to a temporary folder beside `out` (same file system, so the final rename
is atomic); only a block that finishes moves it into place, replacing an existing `out` at the
very end. A failed or interrupted block deletes the temporary folder.
"""

from __future__ import annotations

from contextlib import contextmanager
import os
from pathlib import Path
import shutil
import tempfile
from typing import Iterator


@contextmanager
def written_in_place(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`, moved to `out` when the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.tmp-'))
    try:
        yield tmp
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(tmp: Path, out: Path) -> None:
    """
    Rename the finished folder `tmp` to `out`.

    An existing `out` is replaced only at the end (and put back if the rename fails).
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.old-'))
    os.replace(out, old / 'out')          # move the old folder aside ...
    try:
        os.replace(tmp, out)              # ... then the new one in
    except BaseException:
        os.replace(old / 'out', out)      # put the old one back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
