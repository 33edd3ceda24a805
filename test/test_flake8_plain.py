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

"""flake8 (the Python package) on ros2_gmskip/ and test/ with setup.cfg: runs without ROS 2."""

from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.linter
def test_flake8_plain():
    pytest.importorskip('flake8')
    proc = subprocess.run(
        [sys.executable, '-m', 'flake8', '--config', str(REPO / 'setup.cfg'),
         'ros2_gmskip', 'test'],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f'flake8 found problems:\n{proc.stdout}{proc.stderr}'
