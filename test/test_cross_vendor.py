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
Cross-vendor: the Cyclone DDS transport and real rclpy (Fast DDS) nodes, both directions.

1. The describer on the DDS transport, fed by an rclpy camera (Image and CompressedImage at
   30 Hz); the rclpy probe receives descriptions and /diagnostics and sees the node in the ROS
   graph (what `ros2 node list` / `ros2 node info` read: ros_discovery_info).
2. The describer on rclpy, fed by a camera on the DDS transport; a DDS listener receives the
   descriptions and /diagnostics.
Plus the ros_discovery_info message: ours and rclpy's (de)serializer read each other's bytes.
"""

import json
import signal
import threading
import time

import numpy as np
import pytest
import ros_env

DOMAIN = ros_env.use_loopback()
rclpy = ros_env.import_rclpy()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100 - after the env is set
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from ros2_gmskip.ros.dds_transport import DdsTransport  # noqa: E402
from ros2_gmskip.ros.discovery import participant_info, ParticipantEntitiesInfo  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
FAKE_TEXT = 'a car ahead, clear day.'
HZ, SECONDS = 30.0, 2.0
# best effort (sensor data QoS) on a shared 2-core machine: a slow reader thread loses frames
# when its keep-last-5 history overflows; measured 50-60 of 60 here (docs/testing.md)
MIN_DELIVERED = 0.6
W, H = 64, 48


def frame(n: int) -> np.ndarray:
    return np.full((H, W, 3), 40 + n % 3 * 80, np.uint8)


def jpeg(rgb: np.ndarray) -> bytes:
    from ros2_gmskip.ros.image_convert import rgb_to_jpeg
    return rgb_to_jpeg(rgb)


def counts(values: dict) -> dict:
    return {k: int(values[k]) for k in ('received', 'described', 'dropped', 'rejected',
                                        'errors', 'pending')}


@pytest.fixture(scope='module')
def probe():
    rclpy.init(domain_id=DOMAIN)      # not the environment: other modules set theirs
    node = rclpy.create_node('cross_vendor_probe')
    yield node
    node.destroy_node()
    rclpy.try_shutdown()


def spin_for(node, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.01)


def test_discovery_message_reads_the_same_with_rclpy():
    import uuid

    from rmw_dds_common import msg as rmw
    Gid, NodeEntitiesInfo = rmw.Gid, rmw.NodeEntitiesInfo

    guids = [uuid.UUID(bytes=bytes(range(i, i + 16))) for i in (1, 40, 80)]
    ours = participant_info(guids[0], [('/cam0', 'gmskip_describer', [guids[1]], guids[1:])])
    theirs = rmw.ParticipantEntitiesInfo(
        gid=Gid(data=list(guids[0].bytes)),
        node_entities_info_seq=[NodeEntitiesInfo(
            node_namespace='/cam0', node_name='gmskip_describer',
            reader_gid_seq=[Gid(data=list(guids[1].bytes))],
            writer_gid_seq=[Gid(data=list(g.bytes)) for g in guids[1:]])])
    # same bytes but for CDR's alignment padding, whose content is unspecified
    assert deserialize_message(ours.serialize(), rmw.ParticipantEntitiesInfo) == theirs
    assert ParticipantEntitiesInfo.deserialize(serialize_message(theirs)) == ours
    assert len(ours.serialize()) == len(serialize_message(theirs))


@pytest.mark.timeout(120)
@pytest.mark.parametrize('compressed', [False, True], ids=['Image', 'CompressedImage'])
def test_rclpy_camera_to_dds_describer(probe, compressed):
    ns, name = f'/xv/dds{int(compressed)}', 'describer'
    topic = f'/xv/camera{int(compressed)}/image'
    proc = ros_env.start_describer(DOMAIN, [
        '-r', f'__ns:={ns}', '-r', f'__node:={name}', '-r', f'~/input/image:={topic}',
        '-r', f'~/input/image/compressed:={topic}/compressed',
        '-p', f'use_compressed:={str(compressed).lower()}', '-p', 'diagnostics_period_s:=0.25'],
        transport='dds')
    got = {'description': [], 'status': []}
    subs = [probe.create_subscription(String, f'{ns}/{name}/output/description',
                                      lambda m: got['description'].append(m.data), 10),
            probe.create_subscription(DiagnosticArray, '/diagnostics', lambda m: got[
                'status'].extend(s for s in m.status if s.name.startswith(ns[1:])), 10)]
    pub = probe.create_publisher(CompressedImage if compressed else Image,
                                 topic + ('/compressed' if compressed else ''),
                                 qos_profile_sensor_data)
    try:
        assert ros_env.wait_for(lambda: got['status'], 60, lambda: spin_for(probe, 0.05),
                                proc), 'no /diagnostics from the DDS node'
        assert ros_env.wait_for(lambda: pub.get_subscription_count() == 1, 10,
                                lambda: spin_for(probe, 0.05)), 'camera not matched'
        assert (name, ns) in probe.get_node_names_and_namespaces()
        assert probe.get_publisher_names_and_types_by_node(name, ns) and \
            (f'{ns}/{name}/output/description', ['std_msgs/msg/String']) in \
            probe.get_publisher_names_and_types_by_node(name, ns)
        sub_topic = topic + ('/compressed' if compressed else '')
        msgtype = 'sensor_msgs/msg/' + ('CompressedImage' if compressed else 'Image')
        assert probe.get_subscriber_names_and_types_by_node(name, ns) == [(sub_topic, [msgtype])]
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < SECONDS:
            if compressed:
                msg = CompressedImage(format='jpeg', data=jpeg(frame(sent)))
            else:
                msg = Image(height=H, width=W, encoding='rgb8', step=W * 3,
                            data=frame(sent).tobytes())
            msg.header.stamp = probe.get_clock().now().to_msg()
            msg.header.frame_id = 'camera0/camera_optical_link'
            pub.publish(msg)
            sent += 1
            spin_for(probe, max(0.0, start + sent / HZ - time.monotonic()))
        spin_for(probe, 1.0)
        values = {kv.key: kv.value for kv in got['status'][-1].values}
    finally:
        for sub in subs:
            probe.destroy_subscription(sub)
        probe.destroy_publisher(pub)
        rc, out = ros_env.stop(proc, signal.SIGTERM)
    assert rc == 0, out
    assert got['description'] and set(got['description']) == {FAKE_TEXT}
    c = counts(values)
    assert c['received'] >= MIN_DELIVERED * sent and c['rejected'] == c['errors'] == 0, (c, sent)
    assert c['described'] + c['dropped'] + c['pending'] == c['received']
    print(f'rclpy -> DDS, {"CompressedImage" if compressed else "Image"} at {HZ:.0f} Hz: '
          f'sent {sent}, received {c["received"]}, described {c["described"]}')


@pytest.mark.timeout(120)
@pytest.mark.parametrize('compressed', [False, True], ids=['Image', 'CompressedImage'])
def test_dds_camera_to_rclpy_describer(compressed):
    ns, name = f'/xv/rclpy{int(compressed)}', 'describer'
    topic = f'/xv/dds_camera{int(compressed)}/image'
    proc = ros_env.start_describer(DOMAIN, [
        '-r', f'__ns:={ns}', '-r', f'__node:={name}', '-r', f'~/input/image:={topic}',
        '-r', f'~/input/image/compressed:={topic}/compressed',
        '-p', f'use_compressed:={str(compressed).lower()}', '-p', 'diagnostics_period_s:=0.25'],
        transport='rclpy')
    dds = DdsTransport('xv_dds_peer', [], domain_id=DOMAIN)
    got = {'description': [], 'status': []}
    lock = threading.Lock()

    def keep(key, value):
        with lock:
            got[key].append(value)

    dds.create_subscription(f'{ns}/{name}/output/description', 'std_msgs/msg/String',
                            lambda m: keep('description', m.data), qos='default')
    dds.create_subscription('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', lambda m: [
        keep('status', s) for s in m.status if s.name.startswith(ns[1:])], qos='default')
    msgtype = 'sensor_msgs/msg/' + ('CompressedImage' if compressed else 'Image')
    camera = dds.create_publisher(topic + ('/compressed' if compressed else ''), msgtype,
                                  qos='sensor')
    try:
        assert ros_env.wait_for(lambda: got['status'], 60, proc=proc), \
            'no /diagnostics from the rclpy node'
        assert ros_env.wait_for(lambda: len(camera.writer.get_matched_subscriptions()) == 1, 10), \
            'camera not matched'
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < SECONDS:
            sec, nanosec = dds.now()
            header = {'stamp': {'sec': sec, 'nanosec': nanosec},
                      'frame_id': 'camera0/camera_optical_link'}
            if compressed:
                msg = dds.make_message(msgtype, header=header, format='jpeg',
                                       data=jpeg(frame(sent)))
            else:
                msg = dds.make_message(msgtype, header=header, height=H, width=W,
                                       encoding='rgb8', step=W * 3, data=frame(sent).tobytes())
            camera.publish(msg)
            sent += 1
            time.sleep(max(0.0, start + sent / HZ - time.monotonic()))
        time.sleep(1.0)
        with lock:
            values = {kv.key: kv.value for kv in got['status'][-1].values}
            descriptions = list(got['description'])
    finally:
        dds.shutdown()
        rc, out = ros_env.stop(proc, signal.SIGINT)
    assert rc == 0, out
    assert descriptions and set(descriptions) == {FAKE_TEXT}
    c = counts(values)
    assert c['received'] >= MIN_DELIVERED * sent and c['rejected'] == c['errors'] == 0, (c, sent)
    assert c['described'] + c['dropped'] + c['pending'] == c['received']
    print(f'DDS -> rclpy, {"CompressedImage" if compressed else "Image"} at {HZ:.0f} Hz: '
          f'sent {sent}, received {c["received"]}, described {c["described"]}')
    assert json.dumps(values)      # every value is text (DiagnosticStatus KeyValue)
