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
Check every Python file carries the Apache-2.0 header that package.xml's license names.

ament_copyright does this under colcon test, but it is not on PyPI, so test_copyright.py skips
outside a ROS 2 install; this test holds the same line everywhere `make test` runs.
"""

from pathlib import Path
import re
import xml.etree.ElementTree as ET

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ('ros2_gmskip', 'test', 'bench', 'launch')
COPYRIGHT = re.compile(r'# Copyright \d{4}(-\d{4})? ros2_gmskip developers\n')
LICENSE_LINES = """#
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


def python_files() -> list[Path]:
    """Return the project's .py files: everything under ROOTS plus setup.py."""
    found = [REPO / 'setup.py']
    for root in ROOTS:
        found += [p for p in sorted((REPO / root).rglob('*.py')) if '__pycache__' not in p.parts]
    return found


def header_problem(text: str) -> str | None:
    """Return what is wrong with the license header atop `text`, or None when it is right."""
    if text.startswith('#!'):
        text = text.partition('\n')[2]
    match = COPYRIGHT.match(text)
    if match is None:
        return 'no "# Copyright <year> ros2_gmskip developers" first line (after a shebang)'
    if not text[match.end():].startswith(LICENSE_LINES):
        return 'the Apache-2.0 notice under the copyright line differs from the standard one'
    return None


@pytest.mark.linter
def test_every_python_file_has_the_apache_header():
    files = python_files()
    assert len(files) > 50, f'found only {len(files)} .py files under {ROOTS}: wrong REPO?'
    problems = [f'{p.relative_to(REPO)}: {why}' for p in files
                if (why := header_problem(p.read_text(encoding='utf-8'))) is not None]
    assert not problems, 'license header missing or changed:\n' + '\n'.join(problems)


@pytest.mark.linter
def test_license_file_and_package_xml_agree():
    assert 'Version 2.0, January 2004' in (REPO / 'LICENSE').read_text(encoding='utf-8')
    assert ET.parse(REPO / 'package.xml').getroot().findtext('license') == 'Apache-2.0'


@pytest.mark.linter
def test_header_problem_catches_missing_and_altered_headers():
    good = (REPO / 'setup.py').read_text(encoding='utf-8')
    assert header_problem(good) is None
    assert header_problem('#!/usr/bin/env python3\n' + good) is None
    assert header_problem('"""No header."""\n') is not None
    assert header_problem('\n' + good) is not None                     # not at the top
    assert header_problem(good.replace('Version 2.0', 'Version 3.0', 1)) is not None
    assert header_problem(good.replace('ros2_gmskip developers', 'someone', 1)) is not None
