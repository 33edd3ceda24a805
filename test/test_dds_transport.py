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
The Cyclone DDS transport: ROS 2 wire format, names, ROS arguments, and the node end to end.

Every participant here uses config/cyclonedds-loopback.xml (no packet leaves 127.0.0.1) and a
random domain id in 100..200. The wire-format tests compare our serialization with rosbags' ROS 2
CDR serializer, an implementation independent of ours (what rmw_cyclonedds_cpp puts on the wire).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent
LOOPBACK = REPO / 'config' / 'cyclonedds-loopback.xml'
os.environ['CYCLONEDDS_URI'] = f'file://{LOOPBACK}'       # before cyclonedds is imported

from cyclonedds.core import Policy  # noqa: E402
from fakes import FakeBackend  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ros2_gmskip.ros import dds_types as D  # noqa: E402
from ros2_gmskip.ros.dds_transport import _qos, dds_topic_name, DdsTransport  # noqa: E402
from ros2_gmskip.ros.params import ParameterError  # noqa: E402
from ros2_gmskip.ros.transport import (  # noqa: E402
    parse_ros_args,
    remap_name,
    remove_ros_args,
    resolve_name,
    select_transport,
    TransportError,
)

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
CAMERA_TOPIC = '/sensing/camera/camera0/image_rect_color'
FLOAT64_STAMPED_MSG = 'builtin_interfaces/Time stamp\nfloat64 data\n'


def domain_id() -> int:
    return random.randint(100, 200)


# ------------------------------------------------------------------------------------------------
# wire format

@pytest.fixture(scope='module')
def typestore():
    from rosbags.typesys import get_types_from_msg, get_typestore, Stores

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(FLOAT64_STAMPED_MSG,
                                      'autoware_internal_debug_msgs/msg/Float64Stamped'))
    return store


def ros_header(ts, sec=0, nanosec=0, frame_id=''):
    T = ts.types
    stamp = T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return T['std_msgs/msg/Header'](stamp=stamp, frame_id=frame_id)


@pytest.mark.parametrize('h,w', [(1, 1), (3, 5), (120, 160)])
def test_image_bytes_match_ros2_cdr(typestore, h, w):
    T = typestore.types
    pixels = np.random.default_rng(h * w).integers(0, 255, h * w * 3, dtype=np.uint8)
    ours = D.make(D.Image, {'header': {'stamp': {'sec': 17, 'nanosec': 42}, 'frame_id': 'cam'},
                            'height': h, 'width': w, 'encoding': 'rgb8', 'step': w * 3,
                            'data': pixels})
    ref = bytes(typestore.serialize_cdr(T['sensor_msgs/msg/Image'](
        header=ros_header(typestore, 17, 42, 'cam'), height=h, width=w, encoding='rgb8',
        is_bigendian=0, step=w * 3, data=pixels), 'sensor_msgs/msg/Image'))
    assert ours.serialize() == ref
    # the fast path equals the generic cyclonedds machine
    generic = D.Image(header=ours.header, height=h, width=w, encoding='rgb8', step=w * 3,
                      data=pixels.tolist())
    assert D.IdlStruct.serialize(generic) == ref
    back = D.Image.deserialize(ref)
    assert (back.header.stamp.sec, back.header.stamp.nanosec, back.header.frame_id) == \
        (17, 42, 'cam')
    assert (back.height, back.width, back.encoding, back.step) == (h, w, 'rgb8', w * 3)
    assert back.data == pixels.tobytes()


def test_image_xcdr2_and_big_endian_round_trip():
    from cyclonedds.idl._support import Endianness

    msg = D.Image(header=D.Header(frame_id='x'), height=1, width=3, encoding='mono8', step=3,
                  data=b'\x01\x02\x03')
    for v2 in (False, True):
        blob = msg.serialize(use_version_2=v2, endianness=Endianness.Big)
        generic = D.IdlStruct.serialize(
            D.Image(header=msg.header, height=1, width=3, encoding='mono8', step=3,
                    data=[1, 2, 3]), use_version_2=v2, endianness=Endianness.Big)
        assert blob == generic
        assert D.Image.deserialize(blob).data == b'\x01\x02\x03'


def test_other_types_match_ros2_cdr(typestore):
    T = typestore.types
    jpeg = b'\xff\xd8\xff\xe0fake'
    cases = [
        (D.CompressedImage(header=D.Header(frame_id='c'), format='jpeg', data=jpeg),
         T['sensor_msgs/msg/CompressedImage'](header=ros_header(typestore, frame_id='c'),
                                              format='jpeg',
                                              data=np.frombuffer(jpeg, np.uint8)),
         'sensor_msgs/msg/CompressedImage'),
        (D.String(data='a car ahead.'), T['std_msgs/msg/String'](data='a car ahead.'),
         'std_msgs/msg/String'),
        (D.make(D.DiagnosticArray, {
            'header': {'stamp': {'sec': 3, 'nanosec': 4}},
            'status': [{'level': 2, 'name': 'gmskip_describer: inference', 'message': 'm',
                        'hardware_id': 'onnxruntime',
                        'values': [{'key': 'dropped', 'value': '7'},
                                   {'key': 'k', 'value': ''}]}]}),
         T['diagnostic_msgs/msg/DiagnosticArray'](header=ros_header(typestore, 3, 4), status=[
             T['diagnostic_msgs/msg/DiagnosticStatus'](
                 level=2, name='gmskip_describer: inference', message='m',
                 hardware_id='onnxruntime', values=[
                     T['diagnostic_msgs/msg/KeyValue'](key='dropped', value='7'),
                     T['diagnostic_msgs/msg/KeyValue'](key='k', value='')])]),
         'diagnostic_msgs/msg/DiagnosticArray'),
        (D.make(D.Float64Stamped, {'stamp': {'sec': 9, 'nanosec': 1}, 'data': 12.5}),
         T['autoware_internal_debug_msgs/msg/Float64Stamped'](
             stamp=T['builtin_interfaces/msg/Time'](sec=9, nanosec=1), data=12.5),
         'autoware_internal_debug_msgs/msg/Float64Stamped'),
    ]
    for ours, theirs, typename in cases:
        ref = bytes(typestore.serialize_cdr(theirs, typename))
        assert ours.serialize() == ref, typename
        assert type(ours).deserialize(ref) == ours, typename


def test_type_and_topic_names():
    assert D.Image.__idl_typename__ == 'sensor_msgs::msg::dds_::Image_'
    assert D.DiagnosticArray.__idl_typename__ == 'diagnostic_msgs::msg::dds_::DiagnosticArray_'
    assert D.Float64Stamped.__idl_typename__ == \
        'autoware_internal_debug_msgs::msg::dds_::Float64Stamped_'
    assert D.Header.__idl_typename__ == 'std_msgs::msg::dds_::Header_'
    assert D.Time.__idl_typename__ == 'builtin_interfaces::msg::dds_::Time_'
    assert dds_topic_name(CAMERA_TOPIC) == 'rt/sensing/camera/camera0/image_rect_color'
    assert dds_topic_name('/diagnostics') == 'rt/diagnostics'
    with pytest.raises(KeyError, match='no DDS type'):
        D.dds_type('sensor_msgs/msg/PointCloud2')


def test_qos_profiles_match_rmw_cyclonedds():
    sensor = _qos('sensor')
    assert Policy.Reliability.BestEffort in sensor
    assert Policy.History.KeepLast(5) in sensor
    assert Policy.Durability.Volatile in sensor
    default = _qos('default')
    assert Policy.History.KeepLast(10) in default
    assert any(isinstance(p, Policy.Reliability.Reliable) for p in default)
    for qos in (sensor, default):
        assert Policy.DataRepresentation(use_cdrv0_representation=True) in qos


# ------------------------------------------------------------------------------------------------
# names and ROS arguments

def test_resolve_and_remap_names():
    assert resolve_name('~/input/image', 'gmskip_describer') == '/gmskip_describer/input/image'
    assert resolve_name('~/input/image', 'n', '/perception') == '/perception/n/input/image'
    assert resolve_name('diagnostics', 'n', '/a') == '/a/diagnostics'
    assert resolve_name('/diagnostics', 'n', '/a') == '/diagnostics'
    with pytest.raises(TransportError):
        resolve_name('a//b', 'n')
    remaps = [('~/input/image', CAMERA_TOPIC)]
    assert remap_name('/gmskip_describer/input/image', remaps, 'gmskip_describer') == CAMERA_TOPIC
    remaps = [('/gmskip_describer/input/image', 'camera/image')]
    assert remap_name('/gmskip_describer/input/image', remaps, 'gmskip_describer', '/v') == \
        '/v/camera/image'
    assert remap_name('/other', remaps, 'gmskip_describer') == '/other'


def test_parse_ros_args():
    argv = ['prog', '--transport', 'dds', '--ros-args', '-r', f'~/input/image:={CAMERA_TOPIC}',
            '--remap', 'other_node:~/x:=/y', '-r', '__ns:=/perception',
            '-p', 'max_new_tokens:=16', '--param', 'gmskip_describer:prompt:=hi there',
            '-p', 'use_compressed:=true', '--params-file', '/tmp/p.yaml', '--log-level', 'debug',
            '--', '--duration-s', '3']
    ros, rest = parse_ros_args(argv, 'gmskip_describer')
    assert rest == ['prog', '--transport', 'dds', '--duration-s', '3']
    assert rest == remove_ros_args(argv)
    assert ros.remaps == [('~/input/image', CAMERA_TOPIC)]
    assert ros.namespace == '/perception'
    assert ros.params == {'max_new_tokens': 16, 'prompt': 'hi there', 'use_compressed': True}
    assert ros.params_files == ['/tmp/p.yaml']
    with pytest.raises(TransportError, match='--bogus'):
        parse_ros_args(['p', '--ros-args', '--bogus'], 'n')
    with pytest.raises(TransportError, match='malformed'):
        parse_ros_args(['p', '--ros-args', '-r', 'no_rule'], 'n')


def test_verb_options_become_ros_args(tmp_path):
    import argparse

    from ros2_gmskip.verbs import node as verb

    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    pfile = tmp_path / 'p.yaml'
    pfile.write_text('/**:\n  ros__parameters: {}\n')
    args = parser.parse_args(['--transport', 'dds', '--params-file', str(pfile), '--backend',
                              'torch', '--model', str(tmp_path), '--duration-s', '2',
                              '--ros-args', '-r', '~/input/image:=/cam', '-p', 'prompt:=hi'])
    assert (args.transport, args.duration_s) == ('dds', 2.0)
    ros, rest = parse_ros_args(verb.to_ros_argv(args), 'gmskip_describer')
    assert ros.params == {'backend': 'torch', 'model_path': str(tmp_path), 'prompt': 'hi'}
    assert ros.params_files == [str(pfile)]
    assert ros.remaps == [('~/input/image', '/cam')]
    assert verb.to_ros_argv(parser.parse_args([])) == ['ros2-gmskip-node']


def test_select_transport():
    assert select_transport('dds') is DdsTransport
    with pytest.raises(TransportError, match='carrier-pigeon'):
        select_transport('carrier-pigeon')
    if not __import__('importlib').util.find_spec('rclpy'):
        assert select_transport('auto') is DdsTransport
        with pytest.raises(TransportError, match='source'):
            select_transport('rclpy')


# ------------------------------------------------------------------------------------------------
# the node in-process on a DDS participant (loopback)

def test_node_topics_and_parameters_in_process(tmp_path):
    from ros2_gmskip.ros.node import GmSkipDescriber

    pfile = tmp_path / 'p.yaml'
    pfile.write_text('/**:\n  ros__parameters:\n    max_new_tokens: 12\n    '
                     'diagnostics_period_s: 5.0\n')
    argv = ['prog', '--ros-args', '-r', f'~/input/image:={CAMERA_TOPIC}', '--params-file',
            str(pfile), '-p', 'prompt:=what is ahead?']
    transport = DdsTransport('gmskip_describer', argv, domain_id=domain_id())
    backend = FakeBackend(delay_ms=0)
    node = GmSkipDescriber(transport, backend_factory=lambda params, **_: backend)
    try:
        assert node.params.max_new_tokens == 12 and node.params.prompt == 'what is ahead?'
        assert node.image_sub.topic.name == 'rt' + CAMERA_TOPIC
        assert node.description_pub.topic == 'rt/gmskip_describer/output/description'
        assert node.scene_pub.topic == 'rt/gmskip_describer/output/scene'
        assert node.diagnostics_pub.topic == 'rt/diagnostics'
        assert sorted(p.topic for p in node.debug_pubs.values()) == [
            'rt/gmskip_describer/debug/cyclic_time_ms',
            'rt/gmskip_describer/debug/pipeline_latency_ms',
            'rt/gmskip_describer/debug/processing_time_ms']
        ok, reason = node.parameters_callback({'max_new_tokens': 0})
        assert not ok and 'max_new_tokens' in reason
        ok, reason = node.parameters_callback({'backend': 'torch'})
        assert not ok and 'restart' in reason
        assert node.parameters_callback({'max_new_tokens': 8}) == (True, '')
        assert node.core.params.max_new_tokens == 8
        node.diagnostics_callback()           # builds and publishes a DiagnosticArray
    finally:
        node.destroy_node()


def test_node_rejects_bad_parameter_naming_it():
    from ros2_gmskip.ros.node import GmSkipDescriber

    argv = ['prog', '--ros-args', '-p', 'drop_warn_ratio:=2.0']
    transport = DdsTransport('gmskip_describer', argv, domain_id=domain_id())
    try:
        with pytest.raises(ParameterError, match='drop_warn_ratio'):
            GmSkipDescriber(transport, backend_factory=lambda params, **_: FakeBackend())
    finally:
        transport.shutdown()


# ------------------------------------------------------------------------------------------------
# two processes on loopback: fake camera at 30 Hz -> `ros2-gmskip node --transport dds`

RUN_NODE_VERB = """
import argparse, logging, sys
from ros2_gmskip.verbs import node
parser = argparse.ArgumentParser(prog='ros2-gmskip node')
node.add_arguments(parser)
logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
sys.exit(node.main(parser.parse_args(sys.argv[1:])))
"""


def vm_rss_kb(pid: int) -> int:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for {pid}')


def wait_for(cond, timeout_s: float, proc=None) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.05)
    return cond()


@pytest.mark.timeout(120)
def test_node_end_to_end_over_dds():
    pytest.importorskip('ros2_gmskip.ros.image_convert')
    domain = domain_id()
    # keep the caller's PYTHONPATH after ours: under colcon test it carries the overlay's packages
    env = dict(os.environ, CYCLONEDDS_URI=f'file://{LOOPBACK}', ROS_DOMAIN_ID=str(domain),
               PYTHONPATH=os.pathsep.join([str(TEST_DIR), str(REPO)] + [
                   p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    # `ros2-gmskip node ...` through the verb module alone: the dispatcher imports every verb,
    # some of which pull in torch (seconds of start-up that say nothing about the node)
    node = subprocess.Popen(
        [sys.executable, '-c', RUN_NODE_VERB, '--transport', 'dds',
         '--duration-s', '90', '--backend-factory', 'fakes:make_backend:120',
         '--ros-args', '-r', f'~/input/image:={CAMERA_TOPIC}'],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listener = DdsTransport('test_listener', [], domain_id=domain)
    got: dict[str, list] = {'description': [], 'scene': [], 'diagnostics': [], 'latency': []}
    listener.create_subscription('/gmskip_describer/output/description', 'std_msgs/msg/String',
                                 lambda m: got['description'].append(m.data), qos='default')
    listener.create_subscription('/gmskip_describer/output/scene', 'std_msgs/msg/String',
                                 lambda m: got['scene'].append(m.data), qos='default')
    listener.create_subscription('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray',
                                 lambda m: got['diagnostics'].append(m), qos='default')
    listener.create_subscription('/gmskip_describer/debug/pipeline_latency_ms',
                                 'autoware_internal_debug_msgs/msg/Float64Stamped',
                                 lambda m: got['latency'].append(m.data), qos='default')
    camera = None
    try:
        # the node is up (and discovered) once its first /diagnostics arrives
        assert wait_for(lambda: got['diagnostics'], 60, node), 'no /diagnostics from the node'
        camera = subprocess.Popen(
            [sys.executable, str(TEST_DIR / 'fakes.py'), 'publish', '--domain', str(domain),
             '--topic', CAMERA_TOPIC, '--hz', '30', '--seconds', '4'],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert wait_for(lambda: got['description'], 10, node), 'no description within 10 s'
        time.sleep(1.0)
        rss_start_kb = vm_rss_kb(node.pid)
        camera_out, _ = camera.communicate(timeout=30)
        assert camera.returncode == 0, camera_out
        time.sleep(1.5)                       # last frame described, one more /diagnostics
        rss_end_kb = vm_rss_kb(node.pid)
        node.send_signal(signal.SIGTERM)
        node_out, _ = node.communicate(timeout=30)
    finally:
        for proc in (camera, node):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        listener.shutdown()
    assert node.returncode == 0, node_out

    assert len(got['description']) >= 5, (len(got['description']), node_out)
    assert got['description'][0] == FakeBackend().text
    scene = json.loads(got['scene'][-1])
    assert scene['frame_id'] == 'camera0/camera_link'
    assert scene['model_id'] == 'fake-model@0123abcd' and scene['stamp']['sec'] > 0

    status = got['diagnostics'][-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == 'gmskip_describer: inference' and status.hardware_id == 'fake'
    counts = {k: int(values[k]) for k in
              ('received', 'described', 'dropped', 'rejected', 'errors', 'pending')}
    assert counts['received'] >= 60, counts      # 120 sent; best effort may lose a few
    assert counts['dropped'] > 0, counts         # 120 ms inference behind a 30 Hz camera
    assert counts['rejected'] == counts['errors'] == 0, counts
    assert counts['described'] + counts['dropped'] + counts['pending'] == counts['received']

    # latency stays bounded: newest frame only, no queue building up
    assert got['latency'] and max(got['latency']) < 1500.0, got['latency']
    assert float(values['total_ms_p99']) < 1000.0

    grown_mb = (rss_end_kb - rss_start_kb) / 1024
    assert grown_mb < 40, f'node RSS grew {grown_mb:.1f} MB over the run'
