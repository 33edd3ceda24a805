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
The launch files, evaluated without the launch tools (not installable from PyPI).

gmskip.launch.xml is evaluated by a small interpreter of the subset it uses (`$(var)`,
`$(find-pkg-share)`, arg defaults in order), so the tests see the node's name, namespace,
parameters and remaps as `ros2 launch` would pass them. gmskip_multi_camera.launch.py is loaded
with stand-ins for the `launch` classes it uses, and each include it makes is evaluated the same
way.
"""

import importlib.util
from pathlib import Path
import re
import sys
import types
import xml.etree.ElementTree as ET

import pytest
import yaml

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
REPO = Path(__file__).resolve().parents[1]
SINGLE = REPO / 'launch' / 'gmskip.launch.xml'
MULTI = REPO / 'launch' / 'gmskip_multi_camera.launch.py'
SCHEMA = REPO / 'schema' / 'gmskip.schema.json'
_SUBST = re.compile(r'\$\(([a-z-]+) ([^)]*)\)')


def substitute(text: str, values: dict[str, str]) -> str:
    """Expand the substitutions gmskip.launch.xml uses; fail on any other."""
    def one(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2).strip()
        if kind == 'var':
            return values[name]
        if kind == 'find-pkg-share' and name == 'ros2_gmskip':
            return str(REPO)
        raise AssertionError(f'substitution $({kind} {name}) is not understood by this test')
    return _SUBST.sub(one, text)


def evaluate(path: Path, given: dict[str, str]) -> dict:
    """Return the node of a single-node XML launch file as `ros2 launch` would start it."""
    root = ET.parse(path).getroot()
    values: dict[str, str] = {}
    for arg in root.findall('arg'):
        name = arg.get('name')
        values[name] = given[name] if name in given else substitute(arg.get('default'), values)
    unknown = set(given) - set(values)
    assert not unknown, f'{path.name} has no arg {unknown}'
    node = root.find('node')
    params: dict = {}
    for param in node.findall('param'):
        if param.get('from'):
            params.setdefault('__files__', []).append(substitute(param.get('from'), values))
        else:
            params[param.get('name')] = yaml.safe_load(substitute(param.get('value'), values))
    return {
        'pkg': node.get('pkg'), 'exec': node.get('exec'),
        'name': substitute(node.get('name'), values),
        'namespace': substitute(node.get('namespace', ''), values),
        'params': params,
        'remaps': {r.get('from'): substitute(r.get('to'), values) for r in node.findall('remap')},
    }


def args_of(path: Path) -> dict[str, ET.Element]:
    return {a.get('name'): a for a in ET.parse(path).getroot().findall('arg')}


# ------------------------------------------------------------------------------------------------
# gmskip.launch.xml

def test_default_launch_describes_camera0():
    node = evaluate(SINGLE, {})
    assert (node['pkg'], node['exec'], node['name'], node['namespace']) == \
        ('ros2_gmskip', 'gmskip_describer', 'gmskip_describer', '')
    assert node['remaps'] == {
        '~/input/image': '/sensing/camera/camera0/image_rect_color',
        '~/input/image/compressed': '/sensing/camera/camera0/image_rect_color/compressed'}
    assert node['params']['__files__'] == [str(REPO / 'config' / 'gmskip.param.yaml')]
    assert node['params']['use_sim_time'] is False
    assert node['params']['input_timeout_s'] == 2.0


def test_every_launch_arg_reaches_a_parameter_a_remap_or_the_node_name():
    for name in args_of(SINGLE):
        sentinel = f'sentinel_{name}'
        node = evaluate(SINGLE, {name: sentinel})
        assert sentinel in repr(node), f'launch arg {name!r} reaches nothing in the node'


def test_launch_params_are_schema_keys_or_ros_ones():
    import json
    keys = set(json.loads(SCHEMA.read_text())['definitions']['gmskip_describer']['properties'])
    node = evaluate(SINGLE, {})
    for name in node['params']:
        assert name in keys | {'use_sim_time', '__files__'}, name


def test_launch_args_are_documented():
    for path in sorted((REPO / 'launch').glob('*.xml')):
        for name, arg in args_of(path).items():
            assert arg.get('description'), f'{path.name}: arg {name} has no description'


def test_node_name_namespace_and_input_topic():
    node = evaluate(SINGLE, {'node_name': 'describer_front', 'namespace': '/perception/scene',
                             'input_topic': '/camera/front/image', 'use_sim_time': 'true',
                             'bundle_path': '/data/bundle'})
    assert (node['name'], node['namespace']) == ('describer_front', '/perception/scene')
    assert node['remaps'] == {'~/input/image': '/camera/front/image',
                              '~/input/image/compressed': '/camera/front/image/compressed'}
    assert node['params']['use_sim_time'] is True
    assert node['params']['bundle_path'] == '/data/bundle'


# ------------------------------------------------------------------------------------------------
# gmskip_multi_camera.launch.py, with stand-ins for the launch classes it uses

class _Recorded:
    """Stand-in for a launch class: keeps its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchConfiguration:

    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


def _stand_in_modules() -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    def recorded(name):
        return type(name, (_Recorded,), {})

    return {
        'launch': module('launch', LaunchDescription=recorded('LaunchDescription')),
        'launch.actions': module(
            'launch.actions', DeclareLaunchArgument=recorded('DeclareLaunchArgument'),
            GroupAction=recorded('GroupAction'),
            IncludeLaunchDescription=recorded('IncludeLaunchDescription'),
            OpaqueFunction=recorded('OpaqueFunction')),
        'launch.launch_description_sources': module(
            'launch.launch_description_sources',
            AnyLaunchDescriptionSource=recorded('AnyLaunchDescriptionSource')),
        'launch.substitutions': module('launch.substitutions',
                                       LaunchConfiguration=LaunchConfiguration),
    }


@pytest.fixture
def multi(monkeypatch):
    for name, mod in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('gmskip_multi_camera_launch', MULTI)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_multi(mod, **given) -> list[dict]:
    """Evaluate the multi-camera launch description: the node each include starts."""
    description = mod.generate_launch_description()
    entities = description.args[0]
    declared = {e.args[0]: e.kwargs['default_value'] for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    unknown = set(given) - set(declared)
    assert not unknown, f'no launch arg {unknown}'
    (opaque,) = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    context = types.SimpleNamespace(launch_configurations=dict(declared, **given))
    groups = opaque.kwargs['function'](context, *opaque.kwargs['args'])
    nodes = []
    for group in groups:
        assert group.kwargs == {'scoped': True, 'forwarding': False}
        (include,) = group.args[0]
        path = Path(include.args[0].args[0])
        assert path.samefile(SINGLE)
        arguments = dict(include.kwargs['launch_arguments'])
        nodes.append(evaluate(path, arguments))
    return nodes


def test_multi_camera_one_describer_per_camera_each_in_its_namespace(multi):
    nodes = run_multi(multi, camera_ids='[0, 2, 5]', image_topic_name='image_raw',
                      backend='torch')
    assert [n['namespace'] for n in nodes] == [f'/gmskip/camera{i}' for i in (0, 2, 5)]
    assert [n['remaps']['~/input/image'] for n in nodes] == [
        f'/sensing/camera/camera{i}/image_raw' for i in (0, 2, 5)]
    assert all(n['name'] == 'gmskip_describer' for n in nodes)
    assert all(n['params']['backend'] == 'torch' for n in nodes)
    # an argument left to its default keeps the single-camera file's (substituted) default
    assert all(n['params']['__files__'] == [str(REPO / 'config' / 'gmskip.param.yaml')]
               for n in nodes)


def test_multi_camera_declares_and_forwards_every_single_camera_arg(multi):
    singles = set(args_of(SINGLE)) - set(multi.PER_CAMERA)
    description = multi.generate_launch_description()
    declared = {e.args[0] for e in description.args[0]
                if type(e).__name__ == 'DeclareLaunchArgument'}
    assert declared == singles | {'camera_ids', 'namespace'}
    for name in sorted(singles):
        nodes = run_multi(multi, camera_ids='[1, 3]', **{name: f'sentinel_{name}'})
        for node in nodes:
            assert f'sentinel_{name}' in repr(node), f'{name} is not forwarded'


def test_multi_camera_namespace_argument(multi):
    nodes = run_multi(multi, camera_ids='[4]', namespace='/perception/scene/')
    assert nodes[0]['namespace'] == '/perception/scene/camera4'
    assert run_multi(multi, camera_ids='7', namespace='')[0]['namespace'] == '/camera7'


@pytest.mark.parametrize('text,problem', [
    ('[]', 'expected a list'), ('[0, -1]', 'expected a list'), ('[a]', 'expected a list'),
    ('[1, 1]', 'repeats'), ('[0, 1', 'not YAML'), ('[true]', 'expected a list')])
def test_multi_camera_refuses_bad_camera_ids(multi, text, problem):
    with pytest.raises(ValueError, match=problem) as err:
        multi.parse_camera_ids(text)
    assert repr(text) in str(err.value)


def test_dds_transport_takes_use_sim_time_false_and_refuses_true():
    import ros_env
    domain = ros_env.use_loopback()
    from ros2_gmskip.ros.dds_transport import DdsTransport
    from ros2_gmskip.ros.transport import TransportError

    defaults = {'max_new_tokens': 48}
    for value, ok in (('false', True), ('true', False)):
        transport = DdsTransport('gmskip_describer', ['x', '--ros-args', '-p',
                                                      f'use_sim_time:={value}'], domain_id=domain)
        try:
            if ok:
                assert transport.declare_parameters(defaults, {}) == defaults
            else:
                with pytest.raises(TransportError, match='use_sim_time true needs the rclpy'):
                    transport.declare_parameters(defaults, {})
        finally:
            transport.shutdown()
