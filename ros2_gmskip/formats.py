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
Reading the project's versioned JSON files: bundle and engine manifests, n-gram draft tables.

Each file names its format (`{"format": "<name>/<version>", ...}`), so a file from another version
or another tool is refused with one line instead of failing later on a missing key:

    data = read_format_json(path, 'ros2_gmskip.ngram_draft/1', BundleError,
                            where="draft table 'x.json'", fix='re-run ros2-gmskip draft')
"""

from __future__ import annotations

import json
from pathlib import Path

from ros2_gmskip.errors import GmSkipError


def read_format_json(path: Path, expected: str, error: type[GmSkipError], where: str,
                     fix: str) -> dict:
    """
    Return the JSON object in `path` if its `format` is `expected`.

    Otherwise raise `error` with one line: '<where>: <file> is not valid JSON (<why>): <fix>'
    or '<where>: <file> format <found> is not <expected>: <fix>'.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise error(f'{where}: {Path(path).name} is not valid JSON ({err}): {fix}') from None
    if not isinstance(data, dict) or data.get('format') != expected:
        found = data.get('format') if isinstance(data, dict) else type(data).__name__
        raise error(f'{where}: {Path(path).name} format {found!r} is not {expected!r}: {fix}')
    return data
