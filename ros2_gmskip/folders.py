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
Write outputs the one way: checked early, complete or absent, with the usual permissions.

    check_writable(Path('models/pruned'), '--out')   # before the long work, not after it
    with written_in_place(Path('models/pruned')) as tmp:
        model.save_pretrained(tmp)            # an error here leaves `out` as it was
    write_file(Path('plan.json'), text)        # a file: temp file + rename

- `check_writable` refuses, in one line, an output whose folder cannot be written (a read-only
  file system, no write permission, a parent that is a file) before any work starts.
  `os.access` answers for the real user, so a root process passes where root can write.
- A folder is written to a temporary folder beside `out` (same file system, so the final rename
  is atomic); only a block that finishes moves it into place, replacing an existing `out` at the
  very end. `written_in_place(out, create=False)` yields a path that does not exist yet, for
  writers that insist on creating their folder themselves (rosbag2).
- A file is written to a temporary file beside it, flushed to disk, then renamed over it.
- On any error, including a full disk halfway through, the temporary is deleted: nothing partial
  is left. A write error (OSError) becomes `OutputError`, one line naming the output.
- Outputs get the modes a plain `mkdir` / `open` would give (0777 / 0666 less the umask), not
  the 0700 / 0600 of `mkdtemp` / `mkstemp`: another user, e.g. the one running the node, can read
  a bundle, plan or model made by this one.
"""

from __future__ import annotations

from contextlib import contextmanager
import errno
import os
from pathlib import Path
import shutil
import tempfile
import threading
from typing import Iterator

from ros2_gmskip.errors import OutputError

# errno values that mean "the output cannot be written", whatever file raised them (a permission
# error counts only for a path inside the temporary: it may be about reading an input).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """Return the process umask (read from /proc, else by setting and restoring it)."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(folder: bool) -> int:
    """Return the mode `mkdir` (folder) or `open` (file) would create here: 0777/0666 & ~umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def check_writable(out: Path, what: str = 'output') -> None:
    """Raise OutputError now if `out` (a file or folder to create or replace) cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir() and not out.is_file():
        raise OutputError(f'{what} {str(out)!r} is neither a file nor a folder: choose a path '
                          'for a new file or folder')
    folder = out.absolute().parent
    while not folder.exists():            # the nearest folder that exists is where we write
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f'{what} {str(out)!r} cannot be created: {str(folder)!r} is a file, '
                          'not a folder: choose another path')
    if not os.access(folder, os.W_OK | os.X_OK):
        if _read_only_fs(folder):
            reason = f'{str(folder)!r} is on a read-only file system'
        else:
            reason = f'no permission to write in {str(folder)!r}'
        raise OutputError(f'{what} {str(out)!r} cannot be written: {reason}: choose a writable '
                          'folder')


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_error(err: OSError, out: Path, what: str = 'output') -> OutputError:
    """Return the one-line OutputError for a failed write of `out` (nothing partial was left)."""
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = 'free some space or write elsewhere'
    else:
        fix = 'choose a writable folder'
    return OutputError(f'{what} {str(out)!r} could not be written ({reason}): {fix}; nothing '
                       'partial was left')


def _is_write_error(err: BaseException, tmp: Path) -> bool:
    """Return True for an OSError about the output: a write errno, or a file inside `tmp`."""
    if not isinstance(err, OSError):
        return False
    if err.errno in WRITE_ERRNOS:
        return True
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    return any(n == str(tmp) or n.startswith(str(tmp) + os.sep) for n in names)


@contextmanager
def written_in_place(out: Path, what: str = 'output', create: bool = True) -> Iterator[Path]:
    """
    Yield a temporary path beside `out`, moved to `out` when the block succeeds.

    `create`: the path is an empty folder; else it does not exist yet (the block creates it).
    A failed or interrupted block deletes the temporary; an OSError about the output becomes
    OutputError.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.tmp-'))
    except OSError as err:
        raise write_error(err, out, what) from err
    tmp = holder if create else holder / out.name
    try:
        os.chmod(holder, default_mode(folder=True))
        yield tmp
        move_into_place(tmp, out)
    except BaseException as err:
        shutil.rmtree(holder, ignore_errors=True)
        if _is_write_error(err, holder):
            raise write_error(err, out, what) from err
        raise
    if not create:
        shutil.rmtree(holder, ignore_errors=True)


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


@contextmanager
def file_in_place(path: Path, what: str = 'output') -> Iterator[Path]:
    """
    Yield a temporary file path beside `path` (same suffix), renamed to `path` on success.

    For writers that want a file name (matplotlib's savefig, onnx.save): the temporary is
    deleted if the block fails, and an OSError about it becomes OutputError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.tmp-',
                                    suffix=path.suffix)
        os.close(fd)
    except OSError as err:
        raise write_error(err, path, what) from err
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_mode(folder=False))
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _is_write_error(err, tmp):
            raise write_error(err, path, what) from err
        raise


def write_file(path: Path, data: str | bytes | memoryview, what: str = 'output') -> Path:
    """Write `data` (text as UTF-8) to `path` atomically: a complete new file or the old one."""
    payload = data.encode('utf-8') if isinstance(data, str) else data
    with file_in_place(path, what) as tmp:
        with open(tmp, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
