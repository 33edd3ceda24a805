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

from pathlib import Path

import pytest

main = pytest.importorskip(
    'ament_copyright.main',
    reason='ament_copyright is not on PyPI (it comes with a ROS 2 install, where colcon test runs '
           'this); test_license_headers.py checks the same headers everywhere').main

REPO = Path(__file__).resolve().parents[1]
PATHS = [str(REPO / p) for p in ('ros2_gmskip', 'test', 'bench', 'launch', 'setup.py')]


@pytest.mark.copyright
@pytest.mark.linter
def test_copyright():
    rc = main(argv=PATHS)
    assert rc == 0, 'Found errors'
