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
The node's view of ROS 2: one small `Transport` protocol, two implementations.

- `rclpy` (`rclpy_transport.RclpyTransport`): when ROS 2 is sourced.
- `dds` (`dds_transport.DdsTransport`): Cyclone DDS speaking the ROS 2 wire format, for machines
  without ROS 2; it interoperates with Autoware's rmw_cyclonedds_cpp.

Message types are named as in ROS 2 (`sensor_msgs/msg/Image`); nested fields of `make_message` are
plain dicts / lists of dicts on both transports. The ROS argument parsing and name resolution below
are what rcl does, for the DDS transport (rclpy does its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import importlib.util
from typing import Any, Callable, Protocol, Sequence

from ros2_gmskip.errors import GmSkipError
import yaml

QOS_SENSOR = 'sensor'    # best effort, keep last 5, volatile (rclpy qos_profile_sensor_data)
QOS_DEFAULT = 'default'  # reliable, keep last 10, volatile
TRANSPORTS = ('auto', 'rclpy', 'dds')


class TransportError(GmSkipError):
    """A transport is unavailable, or ROS arguments / names are malformed."""


class Publisher(Protocol):
    """What a transport's `create_publisher` returns."""

    def publish(self, msg: Any) -> None:
        ...


class Transport(Protocol):
    """What the node needs from ROS 2 (or from plain DDS)."""

    kind: str          # 'rclpy' | 'dds'
    node_name: str     # after `__node:=` remapping
    namespace: str     # '/' or '/ns'
    logger: Any        # .debug/.info/.warning/.error(str)

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None],
                            qos: str = QOS_SENSOR) -> Any:
        ...

    def create_publisher(self, topic: str, msgtype: str, qos: str = QOS_DEFAULT) -> Publisher:
        ...

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Any:
        ...

    def make_message(self, msgtype: str, **fields: Any) -> Any:
        ...

    def has_type(self, msgtype: str) -> bool:
        ...

    def now(self) -> tuple[int, int]:
        """(sec, nanosec) of the node's clock."""
        ...

    def declare_parameters(self, defaults: dict[str, Any],
                           descriptions: dict[str, str]) -> dict[str, Any]:
        """Declare every key with its default; return the values after ROS-argument overrides."""
        ...

    def on_set_parameters(self, callback: Callable[[dict[str, Any]], tuple[bool, str]]) -> None:
        ...

    def spin(self, duration_s: float | None = None) -> None:
        ...

    def shutdown(self) -> None:
        ...


def rclpy_available() -> bool:
    return importlib.util.find_spec('rclpy') is not None


def select_transport(kind: str = 'auto') -> type:
    """Return the transport class for 'auto' (rclpy if importable, else dds), 'rclpy' or 'dds'."""
    if kind not in TRANSPORTS:
        raise TransportError(f'unknown transport {kind!r}: use one of {", ".join(TRANSPORTS)}')
    if kind == 'auto':
        kind = 'rclpy' if rclpy_available() else 'dds'
    if kind == 'rclpy':
        if not rclpy_available():
            raise TransportError("transport 'rclpy' needs ROS 2: source "
                                 '/opt/ros/<distro>/setup.bash or use --transport dds')
        from ros2_gmskip.ros.rclpy_transport import RclpyTransport
        return RclpyTransport
    from ros2_gmskip.ros.dds_transport import DdsTransport
    return DdsTransport


# ----------------------------------------------------------------------------------------------
# ROS arguments (`--ros-args -r from:=to -p name:=value --params-file F --`), as rcl parses them

@dataclass
class RosArgs:
    remaps: list[tuple[str, str]] = field(default_factory=list)   # (from, to), in order given
    params: dict[str, Any] = field(default_factory=dict)          # -p name:=value (YAML value)
    params_files: list[str] = field(default_factory=list)
    node_name: str | None = None                                  # -r __node:=name
    namespace: str | None = None                                  # -r __ns:=/ns


_FLAGS_WITH_VALUE = ('--log-level', '--log-config-file', '-e', '--enclave')
_FLAGS = ('--enable-rosout-logs', '--disable-rosout-logs', '--enable-stdout-logs',
          '--disable-stdout-logs', '--enable-external-lib-logs', '--disable-external-lib-logs')


def _split_rule(rule: str, what: str) -> tuple[str | None, str, str]:
    """'[node:]lhs:=rhs' -> (node or None, lhs, rhs)."""
    if ':=' not in rule:
        raise TransportError(f'malformed {what} {rule!r}: expected [node:]name:=value')
    lhs, rhs = rule.split(':=', 1)
    node = None
    if ':' in lhs:
        node, lhs = lhs.split(':', 1)
    if not lhs:
        raise TransportError(f'malformed {what} {rule!r}: empty name')
    return node, lhs, rhs


def parse_ros_args(argv: Sequence[str], node_name: str) -> tuple[RosArgs, list[str]]:
    """Split argv into ROS arguments (for `node_name`) and the rest (argv[0] stays in the rest)."""
    ros = RosArgs()
    rest: list[str] = []
    args = iter(argv)
    in_ros = False
    for arg in args:
        if arg == '--ros-args':
            in_ros = True
            continue
        if not in_ros:
            rest.append(arg)
            continue
        if arg == '--':
            in_ros = False
        elif arg in ('-r', '--remap', '-p', '--param', '--params-file') + _FLAGS_WITH_VALUE:
            value = next(args, None)
            if value is None:
                raise TransportError(f'ROS argument {arg} needs a value')
            if arg in ('-r', '--remap'):
                node, lhs, rhs = _split_rule(value, 'remap rule')
                if node not in (None, node_name):
                    continue
                if lhs in ('__node', '__name'):
                    ros.node_name = rhs
                elif lhs == '__ns':
                    ros.namespace = rhs if rhs.startswith('/') else '/' + rhs
                else:
                    ros.remaps.append((lhs, rhs))
            elif arg in ('-p', '--param'):
                node, lhs, rhs = _split_rule(value, 'parameter override')
                if node in (None, node_name):
                    ros.params[lhs] = yaml.safe_load(rhs) if rhs else ''
            elif arg == '--params-file':
                ros.params_files.append(value)
        elif arg in _FLAGS:
            pass
        else:
            raise TransportError(f'unknown ROS argument {arg!r}: expected -r, -p, --params-file, '
                                 f'--log-level, ... (end ROS arguments with --)')
    return ros, rest


def remove_ros_args(argv: Sequence[str]) -> list[str]:
    """Argv without the `--ros-args ... [--]` sections (like rclpy.utilities.remove_ros_args)."""
    out: list[str] = []
    in_ros = False
    for arg in argv:
        if arg == '--ros-args':
            in_ros = True
        elif in_ros and arg == '--':
            in_ros = False
        elif not in_ros:
            out.append(arg)
    return out


# ----------------------------------------------------------------------------------------------
# names

def resolve_name(name: str, node_name: str, namespace: str = '/') -> str:
    """Expand '~/x' (private), 'x' (relative) or '/x' (absolute) to a fully qualified name."""
    ns = namespace.rstrip('/')
    if name == '~':
        out = f'{ns}/{node_name}'
    elif name.startswith('~/'):
        out = f'{ns}/{node_name}/{name[2:]}'
    elif name.startswith('/'):
        out = name
    else:
        out = f'{ns}/{name}'
    if not out.startswith('/') or '//' in out or out.endswith('/') or '~' in out:
        raise TransportError(f'invalid topic name {name!r} (resolved to {out!r})')
    return out


def remap_name(resolved: str, remaps: Sequence[tuple[str, str]], node_name: str,
               namespace: str = '/') -> str:
    """Apply the first remap rule whose (resolved) left side equals `resolved`."""
    for lhs, rhs in remaps:
        if resolve_name(lhs, node_name, namespace) == resolved:
            return resolve_name(rhs, node_name, namespace)
    return resolved
