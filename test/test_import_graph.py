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
Check the package's import graph: every import points down the layers, none up.

Every `import` / `from ... import` of a ros2_gmskip module, at module level or inside a function
(a lazy import is still a dependency), read with `ast` from the source. A unit is the longest
prefix in LAYERS; an import may go to a lower layer, or stay inside its own unit. Two groups of
one layer may also import each other: the bottom (the bundle format and what it is written with)
and the ML side (scenes, models, search, token skipping, which share torch code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'ros2_gmskip'

# unit -> layer (lower = nearer the bottom)
LAYERS = {
    'errors': 0, 'formats': 0, 'lazy': 0, 'folders': 0, '__version__': 0,
    'bundle_format': 0, 'tokenskip.settings': 0, 'tokenskip.flops': 0,
    'hooks': 0, 'images': 0,
    'runtime': 1,
    'scenes': 2, 'vlm': 2, 'tokenskip': 2, 'gmskip': 2,
    'exporters': 3, 'ros': 3,
    'argtypes': 4,                # command-line types, some read from ros.params' schema
    'verbs': 5, 'cli': 6,
}
SHARED_LAYERS = (0, 2)        # units of these layers may import each other


def unit(module: str) -> str:
    """Return the LAYERS key a dotted ros2_gmskip module name belongs to."""
    parts = module.split('.')[1:]
    for n in range(len(parts), 0, -1):
        key = '.'.join(parts[:n])
        if key in LAYERS:
            return key
    raise AssertionError(f'{module} is in no unit of LAYERS: add it there')


def imports() -> list[tuple[str, str, int]]:
    """Return (importing module, imported module, line) for every ros2_gmskip import."""
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.split('.')[0] == 'ros2_gmskip':
                found += [(module, f'{node.module}.{a.name}' if node.module == 'ros2_gmskip'
                           else node.module, node.lineno) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(module, a.name, node.lineno) for a in node.names
                          if a.name.split('.')[0] == 'ros2_gmskip']
    return found


def test_every_import_points_down_the_layers():
    wrong = []
    for source, target, line in sorted(set(imports())):
        a, b = unit(source), unit(target)
        down = LAYERS[b] < LAYERS[a]
        same = a == b or (LAYERS[a] == LAYERS[b] and LAYERS[a] in SHARED_LAYERS)
        if not (down or same):
            wrong.append(f'{source}:{line} imports {target} ({a} is layer {LAYERS[a]}, '
                         f'{b} is layer {LAYERS[b]})')
    wrong = list(dict.fromkeys(wrong))
    assert not wrong, '\n'.join(wrong)


@pytest.mark.parametrize('source, forbidden', [
    ('runtime', ('exporters', 'vlm', 'gmskip', 'scenes', 'ros', 'verbs')),
    ('bundle_format', ('runtime', 'exporters')),
    ('exporters', ('ros', 'verbs')),
])
def test_named_rules(source, forbidden):
    """The rules the design states in words, checked by name as well as by layer."""
    found = [(s, t, line) for s, t, line in imports()
             if unit(s) == source and unit(t) in forbidden]
    assert not found, found


def test_the_checker_sees_lazy_imports():
    """A function-level import counts: factory imports no exporter even lazily."""
    edges = imports()
    assert any(s == 'ros2_gmskip.runtime.factory' and t.startswith('ros2_gmskip.runtime.')
               for s, t, _ in edges)
    assert all(unit(t) != 'exporters' for s, t, _ in edges if unit(s) == 'runtime')
