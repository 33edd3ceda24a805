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
Parameters of the gmskip_describer node: defaults from config/, checked against schema/.

`config/gmskip.param.yaml` (`/**: ros__parameters:`) holds the defaults;
`schema/gmskip.schema.json` (draft-07) says what is valid. Both are found in the source tree or,
once installed, in the package's share folder (ament_index when ROS 2 is sourced, else
`<prefix>/share/ros2_gmskip`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import functools
import json
from pathlib import Path
import re
import sys
from typing import Any, Iterable, Mapping

from ros2_gmskip.errors import GmSkipError
import yaml

PACKAGE = 'ros2_gmskip'
NODE_NAME = 'gmskip_describer'
PARAM_FILE = 'config/gmskip.param.yaml'
SCHEMA_FILE = 'schema/gmskip.schema.json'


class ParameterError(GmSkipError):
    """A parameter is unknown, of the wrong type or out of range (the message names it)."""


@dataclass(frozen=True)
class DescriberParams:
    """Validated parameters; one field per key of schema/gmskip.schema.json (a test checks)."""

    backend: str = 'onnxruntime'           # onnxruntime | tensorrt | torch
    model_path: str = ''                   # '' = embedded default model
    plan_path: str = ''                    # '' = factory's choice
    bundle_path: str = ''                  # '' = derived from model + plan
    engine_path: str = ''                  # '' = cached beside the bundle
    fused_weights: str = 'fp32'            # fp32 | int8 | int4 (onnxruntime, cached export)
    draft_tokens: int = 4                  # speculative decoding guesses per run (onnxruntime)
    precision: str = 'fp16'                # fp16 | fp32
    device: str = 'auto'                   # auto | cpu | cuda
    gpu_id: int = 0
    prompt: str = 'describe the scene.'
    max_new_tokens: int = 48
    use_compressed: bool = False
    max_image_pixels: int = 50_000_000    # larger frames are rejected before decoding
    object_parser: str = ''               # '' = scenes grammar | 'none' | 'module:function'
    build_only: bool = False
    diagnostics_period_s: float = 1.0
    input_timeout_s: float = 2.0           # diagnostics WARN after this long without an image
    latency_warn_ms: float = 1000.0
    drop_warn_ratio: float = 0.9
    error_window: int = 5
    stats_window: int = 1000
    publish_debug: bool = True
    latency_budget_ms: float = 0.0         # 0 = off: the plan's rung, fixed
    rung: str = 'auto'                     # auto | a plan-ladder rung number (0 = fastest)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DescriberParams:
        """Validate `values` (all keys) against the schema and build the dataclass."""
        values = validate(values)
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# finding config/ and schema/

def _share_dirs() -> list[Path]:
    """Candidate roots holding config/ and schema/, in search order."""
    roots = [Path(__file__).resolve().parents[2]]            # source tree / editable install
    try:
        from ament_index_python.packages import get_package_share_directory
        roots.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # not sourced, or package not in the ament index
        pass
    roots.append(Path(sys.prefix) / 'share' / PACKAGE)     # pip install (setup.py data_files)
    return roots


def find_share_file(relpath: str) -> Path:
    """Path of a data file (e.g. 'config/gmskip.param.yaml') in the source tree or share folder."""
    tried = []
    for root in _share_dirs():
        path = root / relpath
        if path.is_file():
            return path
        tried.append(str(path))
    raise ParameterError(f'cannot find {relpath!r} (looked at {", ".join(tried)}): '
                         f'reinstall {PACKAGE} or run from its source tree')


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    """Return the draft-07 schema (whole document)."""
    with open(find_share_file(SCHEMA_FILE), encoding='utf-8') as f:
        return json.load(f)


def node_schema(schema: dict | None = None) -> dict:
    """Return the `definitions.gmskip_describer` object schema (properties, required, ...)."""
    return (schema or load_schema())['definitions'][NODE_NAME]


def load_param_file(path: str | Path, node_name: str = NODE_NAME,
                    namespace: str = '/') -> dict[str, Any]:
    """
    `ros__parameters` for this node in a parameter file (`/**:` or node-named sections).

    Sections apply in file order; nested keys are joined by '.' as ROS 2 does.
    """
    path = Path(path)
    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError(f'cannot read parameter file {str(path)!r}: {err}') from err
    values: dict[str, Any] = {}
    for key, section in doc.items():
        if not isinstance(section, dict) or 'ros__parameters' not in section:
            raise ParameterError(f'parameter file {str(path)!r}: {key!r} has no ros__parameters')
        if node_matches(str(key), node_name, namespace):
            values.update(flatten(section['ros__parameters']))
    return values


@functools.lru_cache(maxsize=1)
def _defaults_cached() -> tuple[tuple[str, Any], ...]:
    return tuple(load_param_file(find_share_file(PARAM_FILE)).items())


def load_defaults() -> dict[str, Any]:
    """Defaults from config/gmskip.param.yaml."""
    return dict(_defaults_cached())


def descriptions() -> dict[str, str]:
    """{key: description} from the schema (for ROS parameter descriptors)."""
    return {k: v.get('description', '') for k, v in node_schema()['properties'].items()}


# ----------------------------------------------------------------------------------------------
# validation

def coerce(values: Mapping[str, Any], schema: dict | None = None) -> dict[str, Any]:
    """
    Undo YAML's typing of numbers where the schema wants otherwise; nothing else changes.

    An int for a 'number' key becomes a float (`1` for `1.0`); an int for a 'string' key with a
    pattern that accepts its digits becomes that text (`-p rung:=2` for `rung: "2"`).
    """
    props = node_schema(schema)['properties']
    out = dict(values)
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        prop = props.get(key, {})
        if prop.get('type') == 'number':
            out[key] = float(value)
        elif prop.get('type') == 'string' and 'pattern' in prop and \
                re.search(prop['pattern'], str(value)):
            out[key] = str(value)
    return out


def validate(values: Mapping[str, Any], schema: dict | None = None) -> dict[str, Any]:
    """Check every key against the schema; raise ParameterError naming each bad key."""
    import jsonschema

    schema = schema or load_schema()
    values = coerce(values, schema)
    validator = jsonschema.Draft7Validator(node_schema(schema))
    problems = []
    for err in sorted(validator.iter_errors(values), key=lambda e: list(e.path)):
        if err.path:
            key = str(err.path[0])
            problems.append(f'parameter {key!r} = {values.get(key)!r}: {_message(err)}')
        elif err.validator == 'additionalProperties':
            extra = sorted(set(values) - set(node_schema(schema)['properties']))
            problems.append(f'unknown parameter(s) {", ".join(map(repr, extra))}: '
                            f'see {SCHEMA_FILE} for the valid keys')
        elif err.validator == 'required':
            problems.append(f'missing parameter: {err.message}')
        else:
            problems.append(err.message)
    if problems:
        raise ParameterError('; '.join(problems))
    return values


def _message(err: Any) -> str:
    """Return jsonschema's message, in words where it would print a regex."""
    if err.validator == 'pattern' and err.validator_value == '\\S':
        return 'is blank: give some text'
    return err.message


def check_value(key: str, value: Any, schema: dict | None = None) -> Any:
    """Return `value` if it is valid for parameter `key`; ParameterError in one line otherwise."""
    import jsonschema

    props = node_schema(schema)['properties']
    if key not in props:
        raise ParameterError(f'unknown parameter {key!r}: see {SCHEMA_FILE} for the valid keys')
    value = coerce({key: value}, schema)[key]
    for err in jsonschema.Draft7Validator(props[key]).iter_errors(value):
        raise ParameterError(f'parameter {key!r} = {value!r}: {_message(err)}')
    return value


def parse_value(key: str, text: str, schema: dict | None = None) -> Any:
    """Parse command-line `text` as parameter `key` (its schema type), then check its bounds."""
    kind = node_schema(schema)['properties'].get(key, {}).get('type')
    casts = {'integer': int, 'number': float, 'boolean': _boolean}
    try:
        value = casts[kind](text) if kind in casts else text
    except ValueError:
        raise ParameterError(f'parameter {key!r} = {text!r}: is not of type {kind!r}') from None
    return check_value(key, value, schema)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ('true', 'false'):
        raise ValueError(text)
    return lowered == 'true'


def load_params(param_files: Iterable[str | Path] = (),
                overrides: Mapping[str, Any] | None = None) -> DescriberParams:
    """Defaults <- each parameter file in order <- overrides, validated."""
    values = load_defaults()
    for path in param_files:
        values.update(load_param_file(path))
    values.update(overrides or {})
    return DescriberParams.from_dict(values)


# ----------------------------------------------------------------------------------------------
# helpers shared with the DDS transport (parameter files name nodes as rcl does)

def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """Flatten nested keys as ROS 2 names parameters: {'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def node_matches(key: str, node_name: str, namespace: str) -> bool:
    """Return True if a parameter-file key ('/**', 'name', '/ns/name', '/**/name', ...) matches."""
    fqn = namespace.rstrip('/') + '/' + node_name
    if key in ('/**', '**'):
        return True
    if not key.startswith('/'):
        key = '/' + key
    pattern = ''
    for part in re.split(r'(/\*\*|\*)', key):
        if part == '/**':
            pattern += '(/[^/]+)*'
        elif part == '*':
            pattern += '[^/]*'
        else:
            pattern += re.escape(part)
    return re.fullmatch(pattern, fqn) is not None
