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
Run gmskip_describer under real rclpy (Jazzy wheels, rmw_fastrtps_cpp), driven by a second node.

The node runs in a child process as `ros2 run` starts it (the console script's module), with a
parameter file, a node-name and namespace remap, an input remap and a `-p` override, on the
runtime's fake backend (the model is not the point here; test_rclpy_backend.py runs a real one).
A probe node in this process publishes camera frames with sensor-data QoS, listens to the
outputs, /diagnostics and /rosout, reads the ROS graph, and changes parameters through the
node's parameter services, as `ros2 param set` does. The tests run in file order on one node;
the last one stops it with SIGINT.
"""

import json
import signal
import time

import pytest
import ros_env

DOMAIN = ros_env.use_loopback()
rclpy = ros_env.import_rclpy()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100 - after the env is set
from rcl_interfaces.msg import Log  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter, parameter_value_to_python  # noqa: E402
from rclpy.qos import (  # noqa: E402
    DurabilityPolicy, qos_profile_sensor_data, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
NAMESPACE, NAME = '/test/cam', 'describer_front'
FQN = f'{NAMESPACE}/{NAME}'
CAMERA = '/test/camera/image'
FAKE_TEXT = 'a car ahead, clear day.'          # ros2_gmskip.runtime.factory.FakeBackend
PARAMS_YAML = f"""
/**:
  ros__parameters:
    diagnostics_period_s: 0.25
    max_new_tokens: 5
{FQN}:
  ros__parameters:
    max_new_tokens: 9
    prompt: "what is ahead?"
"""


class Probe:
    """The second node: camera publisher, output listeners, graph and parameter clients."""

    def __init__(self) -> None:
        self.node = rclpy.create_node('gmskip_probe')
        self.descriptions: list[str] = []
        self.scenes: list[dict] = []
        self.diagnostics: list = []
        self.rosout: list = []
        n = self.node
        n.create_subscription(String, f'{FQN}/output/description',
                              lambda m: self.descriptions.append(m.data), 10)
        n.create_subscription(String, f'{FQN}/output/scene',
                              lambda m: self.scenes.append(json.loads(m.data)), 10)
        n.create_subscription(DiagnosticArray, '/diagnostics',
                              lambda m: self.diagnostics.extend(m.status), 10)
        rosout_qos = QoSProfile(depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                reliability=ReliabilityPolicy.RELIABLE)
        n.create_subscription(Log, '/rosout', self.rosout.append, rosout_qos)
        self.camera = n.create_publisher(Image, CAMERA, qos_profile_sensor_data)
        self.set_client = n.create_client(SetParameters, f'{FQN}/set_parameters')
        self.get_client = n.create_client(GetParameters, f'{FQN}/get_parameters')

    def spin(self, seconds: float = 0.05) -> None:
        rclpy.spin_once(self.node, timeout_sec=seconds)

    def wait(self, cond, timeout_s: float = 20.0, proc=None) -> bool:
        return ros_env.wait_for(cond, timeout_s, step=self.spin, proc=proc)

    def image(self, value: int = 128, encoding: str = 'rgb8', short: bool = False) -> Image:
        msg = Image(height=48, width=64, encoding=encoding, step=64 * 3)
        msg.data = bytes([value]) * (64 * 3 * (24 if short else 48))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera0/camera_optical_link'
        return msg

    def publish_at(self, hz: float, seconds: float, **image) -> int:
        """Publish frames at `hz` for `seconds`, spinning in between; return how many."""
        start, n = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            self.camera.publish(self.image(value=40 + n % 3 * 80, **image))
            n += 1
            while time.monotonic() < start + n / hz:
                self.spin(max(0.0, min(0.01, start + n / hz - time.monotonic())))
        return n

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=10.0), f'{client.srv_name} is not offered'
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=10.0)
        assert future.done(), f'{client.srv_name} did not answer'
        return future.result()

    def set_params(self, **values):
        """Set parameters as `ros2 param set` does; return [(successful, reason)]."""
        request = SetParameters.Request(parameters=[
            Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return [(r.successful, r.reason) for r in self.call(self.set_client, request).results]

    def get_params(self, *names):
        values = self.call(self.get_client, GetParameters.Request(names=list(names))).values
        return {n: parameter_value_to_python(v) for n, v in zip(names, values)}

    def value(self, key: str) -> str | None:
        """Return a value of the node's last diagnostic status."""
        status = self.last_status()
        return {kv.key: kv.value for kv in status.values}.get(key) if status else None

    def last_status(self):
        mine = [s for s in self.diagnostics if s.name == 'test/cam/describer_front: inference']
        return mine[-1] if mine else None


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    params = tmp_path_factory.mktemp('rclpy_node') / 'params.yaml'
    params.write_text(PARAMS_YAML)
    proc = ros_env.start_describer(DOMAIN, [
        '--params-file', str(params), '-r', f'__node:={NAME}', '-r', f'__ns:={NAMESPACE}',
        '-r', f'~/input/image:={CAMERA}', '-p', 'input_timeout_s:=1.0'])
    rclpy.init(domain_id=DOMAIN)      # not the environment: other modules set theirs
    probe = Probe()
    try:
        up = probe.wait(lambda: probe.last_status() is not None, 60, proc=proc)
        if not up:
            _, out = ros_env.stop(proc, signal.SIGKILL)
            pytest.fail(f'the node published no /diagnostics within 60 s:\n{out}')
        # best effort drops what is sent before the node's reader has matched: prime it
        primed = probe.wait(lambda: probe.value('received') not in (None, '0') or
                            probe.camera.publish(probe.image()), 20, proc=proc)
        assert primed, 'no frame reached the node within 20 s'
        yield probe, proc
    finally:
        ros_env.stop(proc, signal.SIGKILL, timeout_s=5)
        probe.node.destroy_node()
        rclpy.try_shutdown()


@pytest.mark.timeout(120)
def test_ros_graph_lists_the_node_and_its_topics(world):
    probe, proc = world
    assert probe.wait(lambda: (NAME, NAMESPACE) in probe.node.get_node_names_and_namespaces())
    topics = dict(probe.node.get_topic_names_and_types())
    assert topics[f'{FQN}/output/description'] == ['std_msgs/msg/String']
    assert topics[f'{FQN}/output/scene'] == ['std_msgs/msg/String']
    assert topics[CAMERA] == ['sensor_msgs/msg/Image']
    subs = probe.node.get_subscriptions_info_by_topic(CAMERA)
    assert [(s.node_name, s.node_namespace) for s in subs] == [(NAME, NAMESPACE)]
    assert subs[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT   # sensor data QoS


@pytest.mark.timeout(60)
def test_parameters_come_from_the_file_sections_and_overrides(world):
    probe, _ = world
    values = probe.get_params('max_new_tokens', 'prompt', 'diagnostics_period_s',
                              'input_timeout_s', 'backend')
    assert values == {'max_new_tokens': 9, 'prompt': 'what is ahead?',
                      'diagnostics_period_s': 0.25, 'input_timeout_s': 1.0,
                      'backend': 'onnxruntime'}


@pytest.mark.timeout(60)
def test_describes_a_30_hz_camera_and_reports_it(world):
    probe, proc = world
    assert probe.wait(lambda: probe.value('pending') == '0', 5, proc=proc)
    before = int(probe.value('received'))
    sent = probe.publish_at(30.0, 3.0)
    assert probe.wait(lambda: probe.value('pending') == '0' and len(probe.descriptions) > 5,
                      10, proc=proc)
    assert set(probe.descriptions) == {FAKE_TEXT}
    scene = probe.scenes[-1]
    assert scene['frame_id'] == 'camera0/camera_optical_link' and scene['text'] == FAKE_TEXT
    assert scene['stamp']['sec'] > 0 and scene['latency']['total_ms'] >= 40.0
    status = probe.last_status()
    values = {kv.key: kv.value for kv in status.values}
    counts = {k: int(values[k]) for k in ('received', 'described', 'dropped', 'rejected',
                                          'errors', 'pending')}
    assert counts['received'] - before >= 0.9 * sent, (counts, before, sent)  # best effort
    assert counts['described'] + counts['dropped'] + counts['pending'] == counts['received']
    assert counts['dropped'] > 0, counts          # 40 ms inference behind a 33 ms camera
    assert status.hardware_id == 'fake' and values['backend'] == 'fake'
    print(f'30 Hz for 3 s: sent {sent}, received {counts["received"] - before} (node total '
          f'{counts["received"]}: described {counts["described"]}, dropped {counts["dropped"]})')


@pytest.mark.timeout(60)
def test_diagnostics_warn_when_the_camera_stops(world):
    probe, proc = world
    assert probe.wait(lambda: probe.last_status().level == b'\x01', 5, proc=proc), \
        probe.last_status()
    assert 'no image for' in probe.last_status().message
    probe.publish_at(30.0, 0.5)
    assert probe.wait(lambda: probe.last_status().level == b'\x00', 5, proc=proc), \
        probe.last_status()


@pytest.mark.timeout(60)
def test_bad_messages_are_rejected_and_the_node_keeps_describing(world):
    probe, proc = world
    before = len(probe.descriptions)
    for image in ({'encoding': 'nope'}, {'short': True}):
        probe.camera.publish(probe.image(**image))
        probe.wait(lambda: False, 0.3)            # one frame at a time: none is dropped
    assert probe.wait(lambda: probe.value('rejected') == '2', 5, proc=proc), probe.last_status()
    values = {kv.key: kv.value for kv in probe.last_status().values}
    assert 'rejected input image' in values['last_error']
    assert probe.wait(lambda: any(
        m.name == 'test.cam.describer_front' and m.level == 30
        and 'rejected input image' in m.msg for m in probe.rosout), 5)
    probe.publish_at(10.0, 0.5)
    assert probe.wait(lambda: len(probe.descriptions) > before, 5, proc=proc)


@pytest.mark.timeout(60)
def test_parameter_changes_through_the_parameter_services(world):
    probe, _ = world
    (ok, reason), = probe.set_params(max_new_tokens=0)
    assert not ok and "'max_new_tokens'" in reason and 'minimum' in reason, reason
    (ok, reason), = probe.set_params(max_new_tokens='many')
    assert not ok and "'max_new_tokens'" in reason and 'integer' in reason, reason
    (ok, reason), = probe.set_params(backend='torch')
    assert not ok and 'backend' in reason and 'restart' in reason, reason
    assert probe.set_params(prompt='describe the road.', input_timeout_s=3.0) == [(True, '')] * 2
    assert probe.get_params('prompt', 'input_timeout_s', 'max_new_tokens') == {
        'prompt': 'describe the road.', 'input_timeout_s': 3.0, 'max_new_tokens': 9}


@pytest.mark.timeout(60)
def test_logs_reach_rosout_with_the_node_name(world):
    probe, _ = world
    assert probe.wait(lambda: any('describes ' + CAMERA in m.msg for m in probe.rosout), 5)
    mine = [m for m in probe.rosout if m.name == 'test.cam.describer_front']
    assert mine and all(m.stamp.sec > 0 for m in mine)
    debug = [m for m in mine if 'autoware_internal_debug_msgs' in m.msg]
    assert len(debug) == 1 and debug[0].level == 30, [m.msg for m in debug]  # WARN, once


@pytest.mark.timeout(60)
def test_sigint_stops_the_node_cleanly(world):
    probe, proc = world
    rc, out = ros_env.stop(proc, signal.SIGINT)
    assert rc == 0, out
    assert 'Traceback' not in out, out
    assert probe.wait(lambda: (NAME, NAMESPACE) not in
                      probe.node.get_node_names_and_namespaces(), 10)
