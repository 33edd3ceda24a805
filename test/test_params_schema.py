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

"""The param YAML, the JSON schema and the README table agree (launch files: test_launch.py)."""

from __future__ import annotations

from dataclasses import fields
import json
from pathlib import Path

import jsonschema
import pytest
from ros2_gmskip.ros import params as P
from ros2_gmskip.ros.schema_table import extract_table, params_table, readme_block
import yaml

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / 'schema' / 'gmskip.schema.json'
PARAM_YAML = REPO / 'config' / 'gmskip.param.yaml'


@pytest.fixture(scope='module')
def schema() -> dict:
    return json.loads(SCHEMA.read_text(encoding='utf-8'))


@pytest.fixture(scope='module')
def param_doc() -> dict:
    return yaml.safe_load(PARAM_YAML.read_text(encoding='utf-8'))


def test_schema_is_valid_draft7(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema['$schema'] == 'http://json-schema.org/draft-07/schema#'
    node = schema['definitions']['gmskip_describer']
    assert node['additionalProperties'] is False
    assert sorted(node['required']) == sorted(node['properties'])
    ref = schema['properties']['/**']['properties']['ros__parameters']['$ref']
    assert ref == '#/definitions/gmskip_describer'
    for name, prop in node['properties'].items():
        assert prop.get('description'), f'{name} has no description'
        assert 'default' in prop, f'{name} has no default'
        jsonschema.Draft7Validator(prop).validate(prop['default'])


def test_param_yaml_validates(schema, param_doc):
    jsonschema.Draft7Validator(schema).validate(param_doc)


def test_every_key_in_both(schema, param_doc):
    in_schema = set(schema['definitions']['gmskip_describer']['properties'])
    in_yaml = set(param_doc['/**']['ros__parameters'])
    assert in_schema - in_yaml == set(), 'in the schema, missing from the YAML'
    assert in_yaml - in_schema == set(), 'in the YAML, missing from the schema'
    assert {f.name for f in fields(P.DescriberParams)} == in_schema


def test_yaml_defaults_match_schema_and_dataclass(schema, param_doc):
    props = schema['definitions']['gmskip_describer']['properties']
    values = param_doc['/**']['ros__parameters']
    defaults = P.DescriberParams()
    for name, prop in props.items():
        assert values[name] == prop['default'], name
        assert getattr(defaults, name) == prop['default'], name


def test_every_yaml_key_is_commented():
    lines = PARAM_YAML.read_text(encoding='utf-8').splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if ':' in stripped and not stripped.startswith('#') and line.startswith('    '):
            assert lines[i - 1].strip().startswith('#'), f'no comment above {stripped!r}'


@pytest.mark.parametrize('key,value,words', [
    ('max_new_tokens', 0, ['max_new_tokens', 'minimum']),
    ('backend', 'tflite', ['backend', 'tflite']),
    ('drop_warn_ratio', 1.5, ['drop_warn_ratio']),
    ('use_compressed', 'yes', ['use_compressed', 'boolean']),
    ('prompt', '', ['prompt']),
])
def test_bad_value_is_rejected_naming_the_key(key, value, words):
    values = P.load_defaults()
    values[key] = value
    with pytest.raises(P.ParameterError) as err:
        P.DescriberParams.from_dict(values)
    for word in words:
        assert word in str(err.value)


def test_unknown_and_missing_keys_are_rejected():
    values = P.load_defaults()
    values['max_new_token'] = 10
    with pytest.raises(P.ParameterError, match='max_new_token'):
        P.validate(values)
    values = P.load_defaults()
    del values['prompt']
    with pytest.raises(P.ParameterError, match='prompt'):
        P.validate(values)


def test_int_for_number_is_coerced():
    values = P.load_defaults()
    values['latency_warn_ms'] = 500
    params = P.DescriberParams.from_dict(values)
    assert params.latency_warn_ms == 500.0 and isinstance(params.latency_warn_ms, float)


def test_load_params_layers_files_and_overrides(tmp_path):
    f = tmp_path / 'p.yaml'
    f.write_text('/**:\n  ros__parameters:\n    max_new_tokens: 16\n    prompt: "x"\n'
                 'other_node:\n  ros__parameters:\n    max_new_tokens: 99\n')
    params = P.load_params([f], overrides={'prompt': 'what is ahead?'})
    assert params.max_new_tokens == 16
    assert params.prompt == 'what is ahead?'


def test_param_file_node_matching():
    assert P.node_matches('/**', 'gmskip_describer', '/')
    assert P.node_matches('gmskip_describer', 'gmskip_describer', '/')
    assert P.node_matches('/gmskip_describer', 'gmskip_describer', '/')
    assert P.node_matches('/perception/gmskip_describer', 'gmskip_describer', '/perception')
    assert P.node_matches('/**/gmskip_describer', 'gmskip_describer', '/a/b')
    assert P.node_matches('/*/gmskip_*', 'gmskip_describer', '/a')
    assert not P.node_matches('/other', 'gmskip_describer', '/')
    assert not P.node_matches('/x/gmskip_describer', 'gmskip_describer', '/y')


def test_share_files_are_found():
    assert P.find_share_file(P.PARAM_FILE).samefile(PARAM_YAML)
    assert P.find_share_file(P.SCHEMA_FILE).samefile(SCHEMA)
    with pytest.raises(P.ParameterError, match='nope.yaml'):
        P.find_share_file('config/nope.yaml')


def test_params_table_lists_every_key(schema):
    table = params_table(schema)
    rows = table.splitlines()[2:]
    assert len(rows) == len(schema['definitions']['gmskip_describer']['properties'])
    assert rows[0].startswith('| `backend` | string |')
    assert all(r.count(' | ') == 4 for r in rows), 'a cell contains an unescaped |'


def test_readme_block_round_trip():
    text = '## Parameters\n\n' + readme_block() + '\n\n## Assumptions\n'
    assert extract_table(text) == params_table()
    assert extract_table('no marker here') is None


def test_readme_contains_the_generated_table():
    readme = REPO / 'README.md'
    text = readme.read_text(encoding='utf-8') if readme.exists() else ''
    table = extract_table(text)
    assert table is not None, 'README.md lost its <!-- params-table --> block'
    assert table == params_table(), \
        'README parameter table is stale: paste `python -m ros2_gmskip.ros.schema_table`'
