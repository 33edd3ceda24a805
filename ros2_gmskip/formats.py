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
Read and write the project's versioned JSON files: manifests, plans, n-gram draft tables.

Each file names its format (`{"format": "<name>@<version>", ...}`, or `<name>/<version>`), so a
file from another version or another tool is refused with one line instead of failing later on a
missing key:

    data = read_format_json(path, 'ros2_gmskip.ngram_draft/1', BundleError,
                            where="draft table 'x.json'", fix='re-run ros2-gmskip draft')

Every JSON file the project writes for another stage to read goes through `write_json_atomic`,
which makes the text first and hands it to `folders.write_file` (a temporary file in the same
folder, then a rename): a reader never sees half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ros2_gmskip.errors import GmSkipError
from ros2_gmskip.folders import write_file


def _version(fmt: str) -> tuple[str, str]:
    """Split 'name@2' or 'name/2' into (name, version)."""
    for sep in '@/':
        name, found, version = fmt.rpartition(sep)
        if found and version.isdigit():
            return name, version
    return fmt, ''


def read_format_json(path: Path, expected: str, error: type[GmSkipError], where: str,
                     fix: str) -> dict:
    """
    Return the JSON object in `path` if its `format` is `expected`.

    Otherwise raise `error` with one line: '<where>: <file> is not valid JSON (<why>): <fix>',
    '<where> has format <v>, this version reads <w>: <fix>' (the same format, another version),
    or '<where>: <file> format <found> is not <expected>: <fix>'.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f'{where}: {Path(path).name} is not valid JSON ({err}): {fix}') from None
    found = data.get('format') if isinstance(data, dict) else type(data).__name__
    if found == expected:
        return data
    name, version = _version(expected)
    found_name, found_version = _version(str(found))
    if isinstance(data, dict) and found_name == name and found_version:
        raise error(f'{where} has format {found_version}, this version reads {version}: {fix}')
    raise error(f'{where}: {Path(path).name} format {found!r} is not {expected!r}: {fix}')


def write_json_atomic(path: Path, data: Any, indent: int | None = 2, what: str = 'output',
                      **dumps: Any) -> Path:
    """
    Write `data` as JSON (and a final newline) to `path` atomically; return the path.

    The text is made before the file is touched, so data that cannot be serialised (a NaN with
    `allow_nan=False`, an object) raises and leaves an existing file as it was; the file itself
    is written by `folders.write_file` (a write error is one OutputError line naming `what`).
    `dumps`: more json.dumps options (sort_keys, separators, allow_nan).
    """
    text = json.dumps(data, indent=indent, **dumps) + '\n'
    return write_file(Path(path), text, what)
