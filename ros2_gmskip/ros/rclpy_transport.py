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
rclpy transport: the node on a sourced ROS 2 (Humble, Jazzy).

rclpy resolves names, remappings (`--ros-args -r`), namespaces and parameter files itself (from the
arguments given to `rclpy.init`). Camera input uses `qos_profile_sensor_data`; publishers use depth
10 (reliable, volatile). Message classes are imported by their ROS name on first use.
"""

from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Sequence

from ros2_gmskip.ros.transport import QOS_DEFAULT, QOS_SENSOR, TransportError


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' (or 'sensor_msgs/Image') -> sensor_msgs.msg.Image."""
    parts = msgtype.split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    if len(parts) != 3:
        raise TransportError(f'malformed message type {msgtype!r}: expected pkg/msg/Type')
    pkg, sub, name = parts
    try:
        return getattr(importlib.import_module(f'{pkg}.{sub}'), name)
    except (ImportError, AttributeError) as err:
        raise TransportError(f'message type {msgtype!r} is not installed: {err}') from err


def _element_type(field_type: str) -> str:
    """'sequence<diagnostic_msgs/KeyValue>' / 'sequence<x/Y, 5>' / 'x/Y[3]' -> 'x/Y'."""
    if field_type.startswith('sequence<'):
        field_type = field_type[len('sequence<'):-1].split(',')[0]
    return field_type.split('[')[0].strip()


def fill(msg: Any, values: dict[str, Any]) -> Any:
    """
    Set fields of a ROS message from plain values; nested messages from dicts / lists of dicts.

    ROS `byte` fields are `bytes` in rclpy: an int given for one becomes bytes([int]).
    """
    types = msg.get_fields_and_field_types()
    for name, value in values.items():
        if name not in types:
            raise TransportError(f'{type(msg).__name__} has no field {name!r}')
        ftype = types[name]
        if isinstance(value, dict):
            fill(getattr(msg, name), value)
            continue
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            cls = message_class(_element_type(ftype))
            value = [fill(cls(), v) for v in value]
        elif ftype == 'octet' and isinstance(value, int):
            value = bytes([value])
        setattr(msg, name, value)
    return msg


class _Logger:
    """rclpy's logger with the `.warning/.exception` names the core uses."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def debug(self, msg: str) -> None:
        self._logger.debug(msg)

    def info(self, msg: str) -> None:
        self._logger.info(msg)

    def warning(self, msg: str) -> None:
        self._logger.warning(msg)

    def error(self, msg: str) -> None:
        self._logger.error(msg)

    def exception(self, msg: str) -> None:
        self._logger.error(msg)


class RclpyTransport:
    """`Transport` on an rclpy Node named `node_name` (rclpy.init must have been called)."""

    kind = 'rclpy'

    def __init__(self, node_name: str, args: Sequence[str] | None = None) -> None:
        from rclpy.node import Node

        # remaps, namespace and parameter files come from the global arguments of rclpy.init
        self.node = Node(node_name)
        self.node_name = self.node.get_name()
        self.namespace = self.node.get_namespace()
        self.logger = _Logger(self.node.get_logger())
        self._subscriptions: list[Any] = []
        self._publishers: list[Any] = []
        self._timers: list[Any] = []

    # ------------------------------------------------------------------------------------------

    def _qos(self, profile: str):
        from rclpy.qos import qos_profile_sensor_data, QoSProfile

        if profile == QOS_SENSOR:
            return qos_profile_sensor_data
        if profile == QOS_DEFAULT:
            return QoSProfile(depth=10)
        raise TransportError(f'unknown QoS profile {profile!r}')

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None],
                            qos: str = QOS_SENSOR) -> Any:
        sub = self.node.create_subscription(message_class(msgtype), topic, callback,
                                            self._qos(qos))
        self._subscriptions.append(sub)
        return sub

    def create_publisher(self, topic: str, msgtype: str, qos: str = QOS_DEFAULT) -> Any:
        pub = self.node.create_publisher(message_class(msgtype), topic, self._qos(qos))
        self._publishers.append(pub)
        return pub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Any:
        timer = self.node.create_timer(period_s, callback)
        self._timers.append(timer)
        return timer

    def has_type(self, msgtype: str) -> bool:
        try:
            message_class(msgtype)
        except TransportError:
            return False
        return True

    def make_message(self, msgtype: str, **fields: Any) -> Any:
        return fill(message_class(msgtype)(), fields)

    def now(self) -> tuple[int, int]:
        stamp = self.node.get_clock().now().to_msg()
        return stamp.sec, stamp.nanosec

    # ------------------------------------------------------------------------------------------

    def declare_parameters(self, defaults: dict[str, Any],
                           descriptions: dict[str, str]) -> dict[str, Any]:
        """Declare each key (dynamic typing: `-p x:=1` for a float is coerced later)."""
        from rcl_interfaces.msg import ParameterDescriptor

        for name, default in defaults.items():
            self.node.declare_parameter(name, default, ParameterDescriptor(
                description=descriptions.get(name, ''), dynamic_typing=True))
        return {name: self.node.get_parameter(name).value for name in defaults}

    def on_set_parameters(self, callback: Callable[[dict[str, Any]], tuple[bool, str]]) -> None:
        """`callback({name: value})` -> (successful, reason), as a parameter set callback."""
        from rcl_interfaces.msg import SetParametersResult

        def parameters_callback(params):
            ok, reason = callback({p.name: p.value for p in params})
            return SetParametersResult(successful=ok, reason=reason)

        self.node.add_on_set_parameters_callback(parameters_callback)

    # ------------------------------------------------------------------------------------------

    def spin(self, duration_s: float | None = None) -> None:
        import rclpy

        if duration_s is None:
            rclpy.spin(self.node)
            return
        end = time.monotonic() + duration_s
        while rclpy.ok() and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=min(0.1, max(end - time.monotonic(), 0.0)))

    def shutdown(self) -> None:
        self.node.destroy_node()

    @classmethod
    def init(cls, args: Sequence[str] | None = None) -> None:
        import rclpy

        rclpy.init(args=list(args) if args is not None else None)

    @classmethod
    def try_shutdown(cls) -> None:
        import rclpy

        rclpy.try_shutdown()

    @classmethod
    def shutdown_exceptions(cls) -> tuple[type[BaseException], ...]:
        from rclpy.executors import ExternalShutdownException

        return (ExternalShutdownException,)
