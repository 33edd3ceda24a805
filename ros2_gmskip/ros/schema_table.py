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
The README's parameter table, generated from schema/gmskip.schema.json so it cannot drift.

    python -m ros2_gmskip.ros.schema_table      # print the Markdown table

README.md holds the table between `<!-- params-table -->` and `<!-- /params-table -->`; a test
checks that it equals `params_table()`. Columns as Autoware's generated tables: Name | Type |
Description | Default | Range.
"""

from __future__ import annotations

import json
from typing import Any

from ros2_gmskip.ros.params import load_schema, node_schema

BEGIN_MARKER = '<!-- params-table -->'
END_MARKER = '<!-- /params-table -->'


def _cell(text: Any) -> str:
    return str(text).replace('|', '\\|').replace('\n', ' ')


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return f'`{json.dumps(value)}`'


def _range(prop: dict) -> str:
    if 'enum' in prop:
        return ', '.join(f'`{v}`' for v in prop['enum'])
    low = high = None
    if 'minimum' in prop:
        low = f'[{prop["minimum"]}'
    elif 'exclusiveMinimum' in prop:
        low = f'({prop["exclusiveMinimum"]}'
    if 'maximum' in prop:
        high = f'{prop["maximum"]}]'
    elif 'exclusiveMaximum' in prop:
        high = f'{prop["exclusiveMaximum"]})'
    if low or high:
        return f'{low or "(-inf"}, {high or "inf)"}'
    if 'pattern' in prop:
        return f'`{prop["pattern"]}`'
    if prop.get('minLength'):
        return f'at least {prop["minLength"]} character(s)'
    return 'N/A'


def params_table(schema: dict | None = None) -> str:
    """Markdown table of every parameter, in schema order (no trailing newline)."""
    props = node_schema(schema or load_schema())['properties']
    lines = ['| Name | Type | Description | Default | Range |',
             '| ---- | ---- | ----------- | ------- | ----- |']
    for name, prop in props.items():
        lines.append(f'| `{name}` | {prop["type"]} | {_cell(prop.get("description", ""))} | '
                     f'{_cell(_default(prop.get("default")))} | {_cell(_range(prop))} |')
    return '\n'.join(lines)


def readme_block(schema: dict | None = None) -> str:
    """Return the table with its markers, as it appears in README.md."""
    return f'{BEGIN_MARKER}\n{params_table(schema)}\n{END_MARKER}'


def extract_table(readme_text: str) -> str | None:
    """Return the text between the markers in README.md (stripped); None without a begin marker."""
    start = readme_text.find(BEGIN_MARKER)
    if start < 0:
        return None
    start += len(BEGIN_MARKER)
    end = readme_text.find(END_MARKER, start)
    return readme_text[start:end if end >= 0 else len(readme_text)].strip()


if __name__ == '__main__':
    print(params_table())
