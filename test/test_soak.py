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
Node soak: bad frames mixed into a 30 Hz camera stream; the node keeps going, the counters add up.

The node runs in this process on a Cyclone DDS participant (loopback, random domain) with a fake
backend (no model: only the pipeline around it is measured); a second participant plays the
camera. Every third frame is bad in a different way. Afterwards every received frame is counted
exactly once (received = described + dropped + rejected + errors + pending), /diagnostics reports
those counters, and the described frames carry the objects parsed from their text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import time

REPO = Path(__file__).resolve().parents[1]
os.environ['CYCLONEDDS_URI'] = f'file://{REPO / "config" / "cyclonedds-loopback.xml"}'

import cv2  # noqa: E402
from fakes import FakeBackend  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ros2_gmskip.ros.dds_transport import DdsTransport  # noqa: E402
from ros2_gmskip.ros.node import GmSkipDescriber  # noqa: E402
from test_images import bomb_png  # noqa: E402

CAMERA = '/sensing/camera/camera0/image_rect_color'
HZ = 30.0
SECONDS = 5.0
TEXT = 'a red car close ahead, a pedestrian far on the left, rainy night.'
COUNTERS = ('received', 'described', 'dropped', 'rejected', 'errors', 'pending')


def raw_frames(width: int = 64, height: int = 48) -> list[tuple[str, dict]]:
    """(kind, Image fields): good frames and the bad ones the node must reject, not crash on."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    mono16 = (rng.integers(0, 65535, (height, width), dtype=np.uint16)).astype('<u2')

    def image(data: bytes, encoding: str, step: int, w: int = width, h: int = height) -> dict:
        return {'height': h, 'width': w, 'encoding': encoding, 'is_bigendian': 0,
                'step': step, 'data': data}

    return [
        ('good', image(rgb.tobytes(), 'rgb8', width * 3)),
        ('good', image(mono16.tobytes(), 'mono16', width * 2)),
        ('good', image(rgb[..., ::-1].tobytes(), 'bgr8', width * 3)),
        ('bad', image(rgb.tobytes(), '32FC1', width * 4)),                  # float depth
        ('bad', image(rgb.tobytes()[:100], 'rgb8', width * 3)),             # short data
        ('bad', image(b'', 'rgb8', 0, 0, 0)),                               # zero size
        ('bad', image(rgb.tobytes(), 'rgb8', width)),                       # step < width x 3
        ('bad', image(bytes(640 * 480 * 3), 'rgb8', 640 * 3, 640, 480)),    # over the pixel limit
        ('bad', image(rgb.tobytes(), 'no_such_encoding', width * 3)),
    ]


def compressed_frames() -> list[tuple[str, dict]]:
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpeg = cv2.imencode('.jpg', rgb)[1].tobytes()
    png16 = cv2.imencode('.png', (rgb[..., 0].astype(np.uint16) * 257))[1].tobytes()
    return [
        ('good', {'format': 'jpeg', 'data': jpeg}),
        ('good', {'format': 'png', 'data': png16}),
        ('good', {'format': 'rgb8; jpeg compressed bgr8', 'data': jpeg}),
        ('bad', {'format': 'png', 'data': bomb_png(20000, 20000, header_only=True)}),
        ('bad', {'format': 'jpeg', 'data': jpeg[:200]}),                    # truncated
        ('bad', {'format': 'png', 'data': b'not a png at all'}),
        ('bad', {'format': 'bmp', 'data': jpeg}),                           # unknown format
        ('bad', {'format': 'jpeg', 'data': b''}),
        ('bad', {'format': '16UC1; compressedDepth', 'data': png16}),
    ]


def interleave(frames: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Good, good, bad, good, good, bad, ...: never error_window bad frames in a row."""
    good = [f for f in frames if f[0] == 'good']
    bad = [f for f in frames if f[0] == 'bad']
    out = []
    for i, b in enumerate(bad):
        out += [good[i % len(good)], good[(i + 1) % len(good)], b]
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize('compressed', [False, True], ids=['image', 'compressed'])
def test_bad_frames_in_a_30hz_stream(compressed):
    domain = random.randint(100, 200)
    topic, msgtype = ((CAMERA + '/compressed', 'sensor_msgs/msg/CompressedImage') if compressed
                      else (CAMERA, 'sensor_msgs/msg/Image'))
    private = '~/input/image/compressed' if compressed else '~/input/image'
    argv = ['prog', '--ros-args', '-r', f'{private}:={topic}',
            '-p', 'max_image_pixels:=200000', '-p', 'diagnostics_period_s:=0.5',
            '-p', f'use_compressed:={"true" if compressed else "false"}']
    backend = FakeBackend(delay_ms=45.0, text=TEXT)        # 2 of 3 frames: near the 30 Hz budget
    node = GmSkipDescriber(DdsTransport('gmskip_describer', argv, domain_id=domain),
                           backend_factory=lambda params, **_: backend)
    camera = DdsTransport('fake_camera', [], domain_id=domain)
    listener = DdsTransport('listener', [], domain_id=domain)
    got: dict[str, list] = {'scene': [], 'diagnostics': []}
    listener.create_subscription('/gmskip_describer/output/scene', 'std_msgs/msg/String',
                                 lambda m: got['scene'].append(json.loads(m.data)))
    listener.create_subscription('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray',
                                 lambda m: got['diagnostics'].append(m))
    pub = camera.create_publisher(topic, msgtype, qos='sensor')
    stream = interleave(compressed_frames() if compressed else raw_frames())
    sent = {'good': 0, 'bad': 0}
    try:
        time.sleep(1.0)                                     # discovery
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < SECONDS:
            kind, fields = stream[n % len(stream)]
            sec, nanosec = camera.now()
            pub.publish(camera.make_message(
                msgtype, header={'stamp': {'sec': sec, 'nanosec': nanosec},
                                 'frame_id': 'camera0/camera_link'}, **fields))
            sent[kind] += 1
            n += 1
            time.sleep(max(0.0, start + n / HZ - time.monotonic()))
        time.sleep(1.5)                                     # the last frame, one more status
        counts = node.core.counts()
        final = node.core.diagnostics()
    finally:
        node.destroy_node()
        camera.shutdown()
        listener.shutdown()

    assert sent['bad'] >= 40 and sent['good'] >= 90, sent
    assert counts['received'] >= 0.5 * n, (counts, n)       # best effort may lose a few
    assert counts['received'] == sum(counts[k] for k in COUNTERS[1:]), counts
    assert counts['pending'] == 0 and counts['errors'] == 0, counts
    assert counts['rejected'] > 0 and counts['described'] > 0, counts   # drops: load-dependent
    assert counts['rejected'] <= sent['bad'], (counts, sent)
    assert final['level'] != 'ERROR', final                 # good frames keep coming
    assert {k: final['values'][k] for k in COUNTERS} == counts
    assert final['values']['last_error'].startswith('rejected input image: ')

    # /diagnostics on the wire says the same (the last one may predate the last frame by 0.5 s)
    status = got['diagnostics'][-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    wire = {k: int(values[k]) for k in COUNTERS}
    assert wire['received'] == sum(wire[k] for k in COUNTERS[1:]), wire
    assert wire['rejected'] > 0 and wire['received'] >= counts['received'] - 20, (wire, counts)

    # every described frame carries the objects its text names
    assert got['scene'], 'no scene output'
    assert got['scene'][-1]['objects'] == [
        {'cls': 'car', 'color': 'red', 'position': 'ahead', 'distance': 'near'},
        {'cls': 'pedestrian', 'color': None, 'position': 'left', 'distance': 'far'}]
