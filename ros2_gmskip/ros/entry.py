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
Console script `gmskip_describer`: refuse to start, in one line, when a dependency is missing.

Imports nothing but the standard library before the check, so a ROS 2 workspace where rosdep (or
pip) left out a Python package gets `error: Python module 'cv2' is missing: ...` naming what to
install, not a ModuleNotFoundError traceback from deep inside the node.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

# module -> (rosdep key or '', pip requirement): what package.xml and requirements.txt declare
DEPENDENCIES: dict[str, tuple[str, str]] = {
    'numpy': ('python3-numpy', 'numpy'),
    'yaml': ('python3-yaml', 'PyYAML'),
    'jsonschema': ('python3-jsonschema', 'jsonschema'),
    'cv2': ('python3-opencv', 'opencv-python-headless'),
    'PIL': ('python3-pil', 'pillow'),
    'tokenizers': ('', 'tokenizers'),
    'onnxruntime': ('python3-onnxruntime-pip', 'onnxruntime'),
    'cyclonedds': ('', 'cyclonedds'),
    'rosbags': ('', 'rosbags'),
    'tqdm': ('python3-tqdm', 'tqdm'),
}
# needed whatever the backend and transport (the others are checked when imported)
ALWAYS = ('numpy', 'yaml', 'jsonschema', 'cv2', 'PIL', 'tokenizers')


def missing_line(module: str) -> str:
    """Return the one-line error for a missing top-level `module`."""
    top = module.split('.')[0]
    rosdep, pip = DEPENDENCIES.get(top, ('', top))
    how = f'install {rosdep} (rosdep install --from-paths src --ignore-src -y) or ' \
        if rosdep else 'install it: '
    return (f'error: Python module {top!r} is missing: {how}pip install {pip} '
            f'(pinned in ros2_gmskip/requirements.txt)')


def first_missing(modules: Sequence[str] = ALWAYS) -> str | None:
    """Return the first of `modules` that cannot be imported, or None."""
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):      # a parent package broken / a None entry
            return module
    return None


def main(args: Sequence[str] | None = None) -> int:
    """Check the dependencies, then run `ros2_gmskip.ros.node.main`."""
    missing = first_missing()
    if missing is None:
        try:
            from ros2_gmskip.ros.node import main as node_main
            return node_main(args)
        except ModuleNotFoundError as err:   # a transport's or backend's own dependency
            missing = err.name or str(err)
    print(missing_line(missing), file=sys.stderr)
    return 1


if __name__ == '__main__':
    sys.exit(main())
