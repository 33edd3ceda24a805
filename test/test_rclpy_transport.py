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
Run the node on rclpy in this process (the Jazzy wheels from requirements-test.txt).

Isolation: a random ROS_DOMAIN_ID and loopback-only DDS for Cyclone DDS and Fast DDS
(`ros_env.use_loopback`), set before rclpy is initialised.
"""

from __future__ import annotations

import time

from fakes import FakeBackend
import pytest
import ros_env

ros_env.use_loopback()
rclpy = ros_env.import_rclpy()

from ros2_gmskip.ros.node import DIAGNOSTIC_NAME, GmSkipDescriber, run  # noqa: E402, I100
from ros2_gmskip.ros.rclpy_transport import RclpyTransport  # noqa: E402

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`

CAMERA_TOPIC = '/test_gmskip/camera/image'


@pytest.fixture
def ros_context():
    rclpy.init(args=['test_rclpy_transport', '--ros-args', '-r',
                     f'~/input/image:={CAMERA_TOPIC}', '-p', 'max_new_tokens:=5'])
    yield
    rclpy.try_shutdown()


def test_make_message_fills_nested_fields(ros_context):
    transport = RclpyTransport('gmskip_describer')
    try:
        msg = transport.make_message(
            'diagnostic_msgs/msg/DiagnosticArray',
            header={'stamp': {'sec': 3, 'nanosec': 4}, 'frame_id': ''},
            status=[{'level': 1, 'name': 'n', 'message': 'm', 'hardware_id': 'h',
                     'values': [{'key': 'a', 'value': 'b'}]}])
        assert msg.header.stamp.sec == 3
        assert msg.status[0].level == b'\x01'
        assert msg.status[0].values[0].key == 'a'
        assert transport.has_type('std_msgs/msg/String')
        assert not transport.has_type('no_such_msgs/msg/Nothing')
    finally:
        transport.shutdown()


@pytest.mark.timeout(60)
def test_rclpy_node_describes_images(ros_context):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    transport = RclpyTransport('gmskip_describer')
    node = GmSkipDescriber(transport, backend_factory=lambda params, **_: FakeBackend(delay_ms=5))
    helper = rclpy.create_node('gmskip_test_helper')
    descriptions, diagnostics = [], []
    helper.create_subscription(String, '/gmskip_describer/output/description',
                               lambda m: descriptions.append(m.data), 10)
    helper.create_subscription(DiagnosticArray, '/diagnostics',
                               lambda m: diagnostics.append(m), 10)
    camera = helper.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(transport.node)
    executor.add_node(helper)
    try:
        assert node.params.max_new_tokens == 5
        end = time.monotonic() + 20
        while time.monotonic() < end and not (descriptions and diagnostics):
            msg = Image(height=4, width=4, encoding='rgb8', step=12, data=bytes(range(48)))
            msg.header.stamp = helper.get_clock().now().to_msg()
            camera.publish(msg)
            executor.spin_once(timeout_sec=0.05)
        assert descriptions and descriptions[0] == FakeBackend().text
        assert diagnostics[-1].status[0].name == DIAGNOSTIC_NAME
        result = transport.node.set_parameters([Parameter('backend', value='torch')])[0]
        assert not result.successful and 'restart' in result.reason
        result = transport.node.set_parameters([Parameter('max_new_tokens', value=0)])[0]
        assert not result.successful and 'max_new_tokens' in result.reason
        result = transport.node.set_parameters([Parameter('max_new_tokens', value=7)])[0]
        assert result.successful and node.core.params.max_new_tokens == 7
    finally:
        executor.shutdown()
        helper.destroy_node()
        node.destroy_node()


@pytest.mark.timeout(60)
def test_run_returns_after_duration():
    rc = run(['gmskip_describer', '--ros-args', '-p', 'diagnostics_period_s:=0.2'],
             transport='rclpy', duration_s=1.0,
             backend_factory=lambda params, **_: FakeBackend(delay_ms=1))
    assert rc == 0
    assert not rclpy.ok()
