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
Cyclone DDS transport: the node without ROS 2, still on the ROS 2 wire (rmw_cyclonedds_cpp).

What makes it interoperate with ROS 2 nodes using rmw_cyclonedds_cpp:
- topic names `rt/<fully qualified name without the leading slash>` (`/diagnostics` ->
  `rt/diagnostics`), after `~`/relative expansion and `--ros-args -r from:=to` remapping;
- type names `pkg::msg::dds_::Type_` and plain CDR (XCDR1) payloads (see `dds_types`);
- QoS as rmw_cyclonedds_cpp maps the rclpy profiles: sensor data = best effort, keep last 5,
  volatile; default = reliable, keep last 10, volatile; data representation XCDR1 only;
- the domain from ROS_DOMAIN_ID (default 0); Cyclone's own settings from CYCLONEDDS_URI.

The node and its endpoints are announced on `ros_discovery_info` (see `discovery`), so
`ros2 node list` and `ros2 node info` show it. One receive thread waits on all readers; callbacks
run on it (the node's callback only stores the frame). Timers run on their own threads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Sequence

from ros2_gmskip.ros import dds_types
from ros2_gmskip.ros.discovery import GraphAnnouncer
from ros2_gmskip.ros.params import load_param_file
from ros2_gmskip.ros.transport import (
    parse_ros_args,
    QOS_DEFAULT,
    QOS_SENSOR,
    remap_name,
    resolve_name,
    TransportError,
)

log = logging.getLogger(__name__)


class ExternalShutdownException(Exception):
    """Never raised by this transport; keeps `except` clauses the same as with rclpy."""


def _qos(profile: str):
    from cyclonedds.core import Policy, Qos
    from cyclonedds.util import duration

    xcdr1 = Policy.DataRepresentation(use_cdrv0_representation=True)
    if profile == QOS_SENSOR:
        return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5),
                   Policy.Durability.Volatile, xcdr1)
    if profile == QOS_DEFAULT:
        return Qos(Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100)),
                   Policy.History.KeepLast(10), Policy.Durability.Volatile, xcdr1)
    raise TransportError(f'unknown QoS profile {profile!r}: use {QOS_SENSOR!r} or {QOS_DEFAULT!r}')


def dds_topic_name(resolved: str) -> str:
    """'/sensing/camera/camera0/image_raw' -> 'rt/sensing/camera/camera0/image_raw'."""
    return 'rt' + resolved


class _Publisher:
    """A `transport.Publisher` over one DDS writer."""

    def __init__(self, writer, topic: str) -> None:
        self.writer = writer
        self.topic = topic

    def publish(self, msg: Any) -> None:
        self.writer.write(msg)


class _Timer:
    def __init__(self, period_s: float, callback: Callable[[], None],
                 stop: threading.Event) -> None:
        self.period_s = period_s
        self.callback = callback
        self._stop = stop
        self._cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name='dds-timer', daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_t = time.monotonic() + self.period_s
        while not self._cancel.is_set() and not self._stop.wait(max(next_t - time.monotonic(), 0)):
            next_t += self.period_s
            try:
                self.callback()
            except Exception:  # a timer must keep ticking; the node logs its own errors
                log.exception('timer callback failed')

    def cancel(self) -> None:
        self._cancel.set()


class DdsTransport:
    """`Transport` over Cyclone DDS (see the module docstring)."""

    kind = 'dds'

    def __init__(self, node_name: str, args: Sequence[str] | None = None,
                 domain_id: int | None = None) -> None:
        from cyclonedds.core import GuardCondition, WaitSet
        from cyclonedds.domain import DomainParticipant

        self.ros_args, _rest = parse_ros_args(list(args or []), node_name)
        self.node_name = self.ros_args.node_name or node_name
        self.namespace = self.ros_args.namespace or '/'
        self.logger = logging.getLogger(self.node_name)
        if domain_id is None:
            text = os.environ.get('ROS_DOMAIN_ID', '') or '0'
            try:
                domain_id = int(text)
            except ValueError:
                raise TransportError(f'ROS_DOMAIN_ID {text!r} is not an integer') from None
        self.domain_id = domain_id
        self.participant = DomainParticipant(domain_id)
        self._topics: dict[str, Any] = {}
        self._readers: list[tuple[Any, Any, Callable[[Any], None]]] = []
        self._writers: list[_Publisher] = []
        self._timers: list[_Timer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._waitset = WaitSet(self.participant)
        self._wake = GuardCondition(self.participant)
        self._waitset.attach(self._wake)
        self._receiver: threading.Thread | None = None
        self._graph = GraphAnnouncer(self.participant)     # `ros2 node list` sees the node
        self._announce()

    # ------------------------------------------------------------------------------------------
    # names and types

    def resolve_topic(self, topic: str) -> str:
        resolved = resolve_name(topic, self.node_name, self.namespace)
        return remap_name(resolved, self.ros_args.remaps, self.node_name, self.namespace)

    def _topic(self, topic: str, msgtype: str):
        from cyclonedds.topic import Topic

        name = dds_topic_name(self.resolve_topic(topic))
        cls = dds_types.dds_type(msgtype)
        with self._lock:
            if name not in self._topics:
                self._topics[name] = Topic(self.participant, name, cls)
            elif self._topics[name].data_type is not cls:
                raise TransportError(f'topic {name!r} already used with another type')
            return self._topics[name]

    def has_type(self, msgtype: str) -> bool:
        return msgtype in dds_types.TYPES

    def make_message(self, msgtype: str, **fields: Any) -> Any:
        return dds_types.make(dds_types.dds_type(msgtype), fields)

    def now(self) -> tuple[int, int]:
        ns = time.time_ns()
        return ns // 1_000_000_000, ns % 1_000_000_000

    # ------------------------------------------------------------------------------------------
    # endpoints

    def create_publisher(self, topic: str, msgtype: str, qos: str = QOS_DEFAULT) -> _Publisher:
        from cyclonedds.pub import DataWriter

        dds_topic = self._topic(topic, msgtype)
        pub = _Publisher(DataWriter(self.participant, dds_topic, qos=_qos(qos)), dds_topic.name)
        self._writers.append(pub)
        self._announce()
        return pub

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None],
                            qos: str = QOS_SENSOR) -> Any:
        from cyclonedds.core import InstanceState, ReadCondition, SampleState, ViewState
        from cyclonedds.sub import DataReader

        reader = DataReader(self.participant, self._topic(topic, msgtype), qos=_qos(qos))
        condition = ReadCondition(reader, SampleState.NotRead | ViewState.Any | InstanceState.Any)
        with self._lock:
            self._waitset.attach(condition)
            self._readers.append((reader, condition, callback))
        if self._receiver is None:
            self._receiver = threading.Thread(target=self._receive, name='dds-receive',
                                              daemon=True)
            self._receiver.start()
        self._announce()
        return reader

    def _announce(self, present: bool = True) -> None:
        """Publish this node and its endpoints on ros_discovery_info (present=False: gone)."""
        with self._lock:
            readers = [reader for reader, _, _ in self._readers]
            writers = [pub.writer for pub in self._writers]
        self._graph.announce(self.namespace, self.node_name if present else '', readers,
                             writers)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(period_s, callback, self._stop)
        self._timers.append(timer)
        return timer

    def _receive(self) -> None:
        from cyclonedds.internal import InvalidSample
        from cyclonedds.util import duration

        while not self._stop.is_set():
            self._waitset.wait(duration(milliseconds=200))
            with self._lock:
                readers = list(self._readers)
            for reader, condition, callback in readers:
                for sample in reader.take(N=32, condition=condition):
                    if self._stop.is_set():
                        return
                    if isinstance(sample, InvalidSample):    # dispose / unregister, no data
                        continue
                    try:
                        callback(sample)
                    except Exception:  # one bad callback must not stop the receive thread
                        self.logger.exception(
                            f'subscription callback on {reader.topic.name} failed')

    # ------------------------------------------------------------------------------------------
    # parameters: defaults <- --params-file (in order) <- -p

    def declare_parameters(self, defaults: dict[str, Any],
                           descriptions: dict[str, str]) -> dict[str, Any]:
        values = dict(defaults)
        for path in self.ros_args.params_files:
            values.update(load_param_file(path, self.node_name, self.namespace))
        values.update(self.ros_args.params)
        # rcl's own parameter (the launch file passes it): wall clock only here, no /clock
        if values.pop('use_sim_time', False) not in (False, 'false'):
            raise TransportError('use_sim_time true needs the rclpy transport (the DDS transport '
                                 'runs on the wall clock): source ROS 2 or pass '
                                 'use_sim_time:=false')
        return values

    def on_set_parameters(self, callback: Callable[[dict[str, Any]], tuple[bool, str]]) -> None:
        """Parameters cannot change at run time without a ROS parameter service: nothing to do."""

    # ------------------------------------------------------------------------------------------
    # life cycle

    def spin(self, duration_s: float | None = None) -> None:
        """Block until shutdown(), SIGTERM, Ctrl-C (KeyboardInterrupt) or `duration_s` elapsed."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            end = None if duration_s is None else time.monotonic() + duration_s
            while not self._stop.is_set():
                left = 0.2 if end is None else min(0.2, end - time.monotonic())
                if left <= 0:
                    break
                self._stop.wait(left)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def shutdown(self) -> None:
        """Stop threads and release the DDS entities (idempotent)."""
        if not self._stop.is_set():
            self._announce(present=False)
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        try:
            self._wake.set(True)
        except Exception:  # already deleted
            pass
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(timeout=2.0)
        for timer in self._timers:
            if timer.thread is not threading.current_thread():
                timer.thread.join(timeout=2.0)
        with self._lock:
            self._readers.clear()
            self._writers.clear()
            self._topics.clear()

    # same class-level hooks as RclpyTransport, so node.main has one shape for both

    @classmethod
    def init(cls, args: Sequence[str] | None = None) -> None:
        """Nothing global to set up (rclpy.init for the rclpy transport)."""

    @classmethod
    def try_shutdown(cls) -> None:
        """Nothing global to tear down (rclpy.try_shutdown for the rclpy transport)."""

    @classmethod
    def shutdown_exceptions(cls) -> tuple[type[BaseException], ...]:
        return (ExternalShutdownException,)
