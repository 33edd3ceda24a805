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
The bags we write follow rosbag2's conventions and open in other readers.

rosbag2 folders have no ROS 1 `.bag` suffix and record each topic's offered QoS and the ROS
distribution. rosbags' AnyReader (which picks the format from the path) and the `mcap` library
with `mcap-ros2-support` (which decodes with the message definitions stored in the file) read
the camera bag and the replay output, Float64Stamped and DiagnosticArray included.
"""

from pathlib import Path

import pytest
from ros2_gmskip.ros.bag import GROUND_TRUTH_TOPIC, make_bag, ROS_DISTRO
from ros2_gmskip.ros.params import DescriberParams
from ros2_gmskip.ros.replay import (
    DESCRIPTION_TOPIC, DIAGNOSTICS_TOPIC, replay_bag, SCENE_TOPIC)
from ros2_gmskip.runtime.factory import create_backend
import yaml

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
N, W, H = 5, 64, 48
CAMERA = '/sensing/camera/camera0/image_rect_color'


def make_pair(root: Path, storage: str) -> tuple[Path, Path]:
    """Return (camera bag, replay output bag) written in `storage` under `root`."""
    camera, output = root / 'camera0', root / 'descriptions'
    make_bag(camera, n=N, fps=10.0, storage=storage, progress=False, width=W, height=H)
    replay_bag(camera, output, create_backend('fake:0'), DescriberParams(), rate='max',
               storage=storage, progress=False)
    return camera, output


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bags(request, tmp_path_factory) -> tuple[Path, Path]:
    return make_pair(tmp_path_factory.mktemp(f'conventions_{request.param}'), request.param)


def topics_metadata(bag: Path) -> dict[str, dict]:
    info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    return info, {t['topic_metadata']['name']: t['topic_metadata']
                  for t in info['topics_with_message_count']}


def test_metadata_has_distro_and_offered_qos(bags):
    camera, output = bags
    for bag in (camera, output):
        info, topics = topics_metadata(bag)
        assert info['ros_distro'] == ROS_DISTRO == 'jazzy'
        assert info['version'] == 8
        for name, meta in topics.items():
            (qos,) = yaml.safe_load(meta['offered_qos_profiles'])     # v8: a YAML string
            best_effort = name == CAMERA
            assert qos['reliability'] == (2 if best_effort else 1), (name, qos)
            assert (qos['history'], qos['depth']) == (1, 5 if best_effort else 10), (name, qos)
            assert qos['durability'] == 2 and qos['liveliness'] == 1      # volatile, automatic
            assert qos['deadline'] == {'sec': 9223372036, 'nsec': 854775807}
    assert set(topics_metadata(camera)[1]) == {CAMERA, GROUND_TRUTH_TOPIC}


def test_any_reader_reads_both_bags(bags):
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosReliability

    camera, output = bags
    with AnyReader([camera]) as reader:
        images = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(
            connections=[c for c in reader.connections if c.topic == CAMERA])]
        (conn,) = [c for c in reader.connections if c.topic == CAMERA]
        assert conn.ext.offered_qos_profiles[0].reliability == QosReliability.BEST_EFFORT
    assert len(images) == N and (images[0].width, images[0].height) == (W, H)
    with AnyReader([output]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts[DESCRIPTION_TOPIC] == counts[SCENE_TOPIC] == N and counts[DIAGNOSTICS_TOPIC]


def test_mcap_ros2_decodes_with_the_stored_definitions(tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    camera, output = make_pair(tmp_path, 'mcap')
    decoded: dict[str, list] = {}
    for bag in (camera, output):
        (path,) = bag.glob('*.mcap')
        with open(path, 'rb') as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            for _schema, channel, _message, msg in reader.iter_decoded_messages():
                decoded.setdefault(channel.topic, []).append(msg)
            (record,) = [m for m in reader.iter_metadata() if m.name == 'rosbag2']
            meta = yaml.safe_load(record.metadata['serialized_metadata'])
            assert meta['ros_distro'] == 'jazzy'
    assert [m.width for m in decoded[CAMERA]] == [W] * N
    assert all(m.data == 'a car ahead, clear day.' for m in decoded[DESCRIPTION_TOPIC])
    status = decoded[DIAGNOSTICS_TOPIC][-1].status[0]
    assert status.name == 'gmskip_describer: inference' and status.hardware_id == 'fake'
    debug = [t for t in decoded if '/debug/' in t]
    assert debug and all(m.data >= 0.0 for t in debug for m in decoded[t])
