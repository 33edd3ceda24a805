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
The one output writer (folders.py): checked early, complete or absent, umask-based modes.

Tests run as root here, and root writes through permission bits: a read-only folder is tested
for real by running the check as user `nobody` (setpriv), and a read-only / full file system by
monkeypatching the calls that answer for it. Where this process may mount a tmpfs, a real full
disk is used too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from pathlib import Path
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from ros2_gmskip import folders
from ros2_gmskip.errors import OutputError
from ros2_gmskip.folders import (
    check_writable, current_umask, default_mode, file_in_place, write_file, written_in_place)

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert text and '\n' not in text, text
    return text


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


# ------------------------------------------------------------------------------------------------
# modes

@pytest.mark.parametrize('mask,folder_mode,file_mode', [
    (0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o002, 0o775, 0o664)])
def test_outputs_get_umask_based_modes(tmp_path, mask, folder_mode, file_mode):
    with umask(mask):
        assert current_umask() == mask
        assert default_mode(folder=True) == folder_mode
        with written_in_place(tmp_path / 'bundle') as tmp:
            (tmp / 'a.onnx').write_bytes(b'x')
        write_file(tmp_path / 'plan.json', '{}')
        with written_in_place(tmp_path / 'bag', create=False) as tmp:
            tmp.mkdir()
    assert (tmp_path / 'bundle').stat().st_mode & 0o777 == folder_mode     # mkdtemp: 0700
    assert (tmp_path / 'plan.json').stat().st_mode & 0o777 == file_mode    # mkstemp: 0600
    assert (tmp_path / 'bag').stat().st_mode & 0o777 == folder_mode
    assert listing(tmp_path) == ['bag', 'bundle', 'plan.json']


# ------------------------------------------------------------------------------------------------
# writable before the work

def test_a_parent_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'f').write_text('x')
    with pytest.raises(OutputError) as excinfo:
        check_writable(tmp_path / 'f' / 'sub' / 'plan.json', '--out')
    assert one_line(excinfo) == (f"--out '{tmp_path}/f/sub/plan.json' cannot be created: "
                                 f"'{tmp_path}/f' is a file, not a folder: choose another path")


def test_a_new_path_under_a_writable_folder_passes(tmp_path):
    check_writable(tmp_path / 'a' / 'b' / 'c.json')
    check_writable(tmp_path)                                 # replace an existing folder
    assert listing(tmp_path) == []                          # the check creates nothing


def test_a_read_only_file_system_is_named(tmp_path, monkeypatch):
    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(folders.os, 'access', lambda path, mode: False)
    monkeypatch.setattr(folders.os, 'statvfs', lambda path: ReadOnly())
    with pytest.raises(OutputError) as excinfo:
        check_writable(tmp_path / 'bag', '--out')
    assert one_line(excinfo) == (f"--out '{tmp_path}/bag' cannot be written: '{tmp_path}' is on "
                                 'a read-only file system: choose a writable folder')


CHECK_AS_NOBODY = """
import sys
from ros2_gmskip.folders import check_writable
from ros2_gmskip.errors import OutputError
try:
    check_writable(sys.argv[1], '--out')
except OutputError as err:
    print(err)
    sys.exit(1)
print('ok')
"""


def _as_nobody(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', *argv],
        capture_output=True, text=True, cwd='/', timeout=300, env=env)


@functools.lru_cache(maxsize=1)
def _nobody_python() -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """
    Return (interpreter, environment) with which user nobody can import ros2_gmskip, or None.

    This interpreter first; else the system Python of the same version with this environment's
    site-packages on PYTHONPATH (an interpreter under a 0700 home cannot be run by nobody).
    """
    paths = os.pathsep.join([str(REPO), sysconfig.get_path('purelib'),
                             sysconfig.get_path('platlib')])
    env = dict(os.environ, HOME=tempfile.gettempdir(), PYTHONPATH=paths,
               _ROS_WHEELS_BOOTSTRAP_COMPLETE='1')     # no re-exec by the ROS wheels' .pth
    version = f'{sys.version_info.major}.{sys.version_info.minor}'
    for python in (sys.executable, f'/usr/bin/python{version}'):
        done = _as_nobody([python, '-c', 'import ros2_gmskip.folders, numpy'], env)
        if done.returncode == 0:
            return python, tuple(env.items())
    return None


def run_as_nobody(*args: str) -> subprocess.CompletedProcess:
    """Run `python args...` as user nobody (skip where that cannot be arranged)."""
    if os.geteuid() != 0 or not shutil.which('setpriv'):
        pytest.skip('needs root and setpriv to run a check as another user')
    found = _nobody_python()
    if found is None:
        pytest.skip('user nobody can run no Python that imports ros2_gmskip here')
    python, env = found
    return _as_nobody([python, *args], dict(env))


@pytest.fixture
def shared_dir():
    """Return a folder under /tmp that user nobody can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix='gmskip-outputs-'))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_folder_without_write_permission_is_refused_for_a_normal_user(shared_dir):
    ro = shared_dir / 'ro'
    ro.mkdir(mode=0o555)
    ro.chmod(0o555)
    rw = shared_dir / 'rw'
    rw.mkdir()
    rw.chmod(0o777)
    done = run_as_nobody('-c', CHECK_AS_NOBODY, str(ro / 'plan.json'))
    assert done.returncode == 1, done
    assert done.stdout.strip() == (f"--out '{ro}/plan.json' cannot be written: no permission to "
                                   f"write in '{ro}': choose a writable folder")
    done = run_as_nobody('-c', CHECK_AS_NOBODY, str(rw / 'x' / 'plan.json'))
    assert (done.returncode, done.stdout.strip()) == (0, 'ok'), done


# ------------------------------------------------------------------------------------------------
# a full disk halfway through: one line, nothing partial

def enospc(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_inside_a_folder_leaves_nothing(tmp_path):
    out = tmp_path / 'model'
    with pytest.raises(OutputError) as excinfo:
        with written_in_place(out, '--out') as tmp:
            (tmp / 'config.json').write_text('{}')
            raise enospc(tmp / 'model.safetensors')
    assert one_line(excinfo) == (f"--out '{out}' could not be written (No space left on device): "
                                 'free some space or write elsewhere; nothing partial was left')
    assert listing(tmp_path) == []


def test_a_full_disk_keeps_the_previous_output(tmp_path):
    out = tmp_path / 'bag'
    with written_in_place(out, create=False) as tmp:
        tmp.mkdir()
        (tmp / 'old.mcap').write_text('old')
    with pytest.raises(OutputError):
        with written_in_place(out, create=False) as tmp:
            tmp.mkdir()
            (tmp / 'new.mcap').write_text('half')
            raise enospc(tmp / 'new.mcap')
    assert listing(tmp_path) == ['bag'] and listing(out) == ['old.mcap']


def test_a_full_disk_writing_a_file_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'plan.json'
    write_file(path, 'old')

    def full(fd):
        raise enospc(tmp_path / '.plan.json.tmp')

    monkeypatch.setattr(folders.os, 'fsync', full)
    with pytest.raises(OutputError, match='No space left on device'):
        write_file(path, 'new')
    assert path.read_text() == 'old' and listing(tmp_path) == ['plan.json']


def test_other_errors_pass_through_and_still_clean_up(tmp_path):
    with pytest.raises(KeyError):
        with file_in_place(tmp_path / 'plot.png') as tmp:
            assert tmp.suffix == '.png' and tmp.parent == tmp_path
            raise KeyError('not a write error')
    with pytest.raises(FileNotFoundError):              # about an input, not the output
        with written_in_place(tmp_path / 'out'):
            open(tmp_path / 'missing-input.json')
    assert listing(tmp_path) == []


@contextlib.contextmanager
def tiny_filesystem(size: str = '256k'):
    """Mount a tmpfs of `size` (skip where this process may not mount); unmount after."""
    if os.geteuid() != 0 or not shutil.which('mount'):
        pytest.skip('mounting a tmpfs needs root')
    path = Path(tempfile.mkdtemp(prefix='gmskip-full-'))
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        path.rmdir()
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], check=False)
        path.rmdir()


def test_a_really_full_disk_leaves_nothing():
    with tiny_filesystem() as disk:
        with pytest.raises(OutputError, match='No space left on device'):
            with written_in_place(disk / 'out') as tmp:
                (tmp / 'big.bin').write_bytes(bytes(1 << 20))
        assert listing(disk) == []
