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
Start one gmskip_describer per camera, each in its own namespace.

    ros2 launch ros2_gmskip gmskip_multi_camera.launch.py camera_ids:='[0, 1, 2]'

Camera i reads /sensing/camera/camera{i}/{image_topic_name} and publishes under
{namespace}/camera{i}/gmskip_describer/output/*. Python, not XML: Jazzy's XML launch has no
loop. Every other argument of gmskip.launch.xml is declared here too (read from that file, so
the two cannot drift) and forwarded to each camera's include; one whose default is built from
other arguments (param_file) defaults to '' here, meaning "the single-camera default".
"""

from pathlib import Path
import xml.etree.ElementTree as ET

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.actions import OpaqueFunction
from launch.launch_description_sources import AnyLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
import yaml

PACKAGE = 'ros2_gmskip'
SINGLE = 'gmskip.launch.xml'
# arguments of the single-camera launch that this file sets per camera (input_topic follows
# from camera_id)
PER_CAMERA = ('camera_id', 'namespace', 'input_topic')


def single_launch_path() -> Path:
    """Return gmskip.launch.xml: beside this file (source tree) or in the package share."""
    here = Path(__file__).resolve().parent / SINGLE
    if here.is_file():
        return here
    return Path(get_package_share_directory(PACKAGE)) / 'launch' / SINGLE


def single_launch_args(path: Path) -> list[tuple[str, str, str]]:
    """Return (name, default, description) of the args gmskip.launch.xml lets callers set."""
    args = []
    for arg in ET.parse(path).getroot().findall('arg'):
        name, default = arg.get('name'), arg.get('default', '')
        if name not in PER_CAMERA:
            # a default made of substitutions stays the single-camera file's: '' = not given
            args.append((name, '' if '$(' in default else default, arg.get('description', '')))
    return args


def parse_camera_ids(text: str) -> list[int]:
    """Return the camera ids of '[0, 1, 2]' (or '0'); raise ValueError naming a bad value."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f'camera_ids {text!r} is not YAML: {err}') from None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                          for i in ids):
        raise ValueError(f'camera_ids {text!r}: expected a list of camera indices >= 0, '
                         f"e.g. '[0, 1, 2]'")
    if len(set(ids)) != len(ids):
        raise ValueError(f'camera_ids {text!r} repeats a camera')
    return ids


def camera_namespace(base: str, camera_id: int) -> str:
    """Return the namespace of camera `camera_id`'s describer under `base`."""
    return '/' + '/'.join(p for p in (base.strip('/'), f'camera{camera_id}') if p)


def describers(context, single: Path, forwarded: list[str]) -> list:
    """
    Return one include of gmskip.launch.xml per camera id (the OpaqueFunction's body).

    Each include runs in a group that does not forward this file's launch configurations: the
    included file sees only the arguments given here, so an argument left '' keeps its own
    default there.
    """
    ids = parse_camera_ids(LaunchConfiguration('camera_ids').perform(context))
    base = LaunchConfiguration('namespace').perform(context)
    values = {name: LaunchConfiguration(name).perform(context) for name in forwarded}
    groups = []
    for camera_id in ids:
        arguments = [(name, value) for name, value in values.items() if value != '']
        arguments += [('camera_id', str(camera_id)),
                      ('namespace', camera_namespace(base, camera_id))]
        include = IncludeLaunchDescription(AnyLaunchDescriptionSource(str(single)),
                                           launch_arguments=arguments)
        groups.append(GroupAction([include], scoped=True, forwarding=False))
    return groups


def generate_launch_description() -> LaunchDescription:
    """Declare camera_ids, namespace and the single-camera args; start a describer per camera."""
    single = single_launch_path()
    args = single_launch_args(single)
    declared = [
        DeclareLaunchArgument('camera_ids', default_value='[0]',
                              description="cameras to describe, a YAML list: '[0, 1, 2]'"),
        DeclareLaunchArgument('namespace', default_value='gmskip',
                              description='each describer runs in {namespace}/camera{id}'),
    ]
    declared += [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, default, text in args]
    forwarded = [name for name, _, _ in args]
    return LaunchDescription(declared + [
        OpaqueFunction(function=describers, args=[single, forwarded])])
