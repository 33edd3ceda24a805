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
Test doubles for the node tests: a FakeBackend, message stand-ins, a DDS camera publisher.

Not a conftest: tests import it explicitly (`from fakes import ...`; pytest puts test/ on sys.path
for rootdir-less test files), and the DDS test runs it as a script:

    python test/fakes.py publish --domain 123 --topic /sensing/camera/camera0/image_rect_color \
        --hz 30 --seconds 4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOOPBACK_URI = f'file://{REPO / "config" / "cyclonedds-loopback.xml"}'
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ros2_gmskip.errors import MessageError  # noqa: E402
from ros2_gmskip.runtime.results import BackendInfo, DEFAULT_PROMPT, Latency, Result  # noqa: E402


class FakeBackend:
    """Sleeps `delay_ms`, then returns a fixed description; can fail on purpose."""

    name = 'fake'

    def __init__(self, delay_ms: float = 20.0, fail: bool = False,
                 fail_first: int = 0, text: str = 'a road ahead with a car on the left.') -> None:
        self.delay_ms = delay_ms
        self.fail = fail              # every call raises
        self.fail_first = fail_first  # the first N calls raise
        self.text = text
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []
        self.info = BackendInfo(backend='fake', model_id='fake-model@0123abcd',
                                plan_id='fake-plan@4567', engine_id='',
                                blocks_removed=(5, 6, 7), device='cpu')
        self._lock = threading.Lock()

    def describe(self, image: np.ndarray, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 48) -> Result:
        t0 = time.perf_counter()
        with self._lock:
            self.calls += 1
            calls = self.calls
            if len(self.shapes) < 8:
                self.shapes.append(tuple(image.shape))
        if self.fail or calls <= self.fail_first:
            raise RuntimeError(f'fake backend failure #{calls}')
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
        time.sleep(self.delay_ms / 1000.0)
        total = (time.perf_counter() - t0) * 1e3
        tokens = len(self.text.split())
        latency = Latency(preprocess_ms=0.1 * total, vision_ms=0.3 * total, prefill_ms=0.2 * total,
                          decode_ms=0.4 * total, total_ms=total, decode_tokens=tokens - 1)
        return Result(text=self.text, tokens=tokens, latency=latency)


def make_backend(delay_ms: str | float = 20.0) -> FakeBackend:
    """`--backend-factory fakes:make_backend:150` -> FakeBackend(delay_ms=150)."""
    return FakeBackend(delay_ms=float(delay_ms))


def image_msg(height: int = 48, width: int = 64, encoding: str = 'rgb8', sec: int = 0,
              nanosec: int = 0, frame_id: str = 'camera0/camera_link', data: bytes | None = None):
    """Return a sensor_msgs/Image stand-in (duck-typed fields)."""
    channels = {'rgb8': 3, 'bgr8': 3, 'mono8': 1, 'rgba8': 4, 'bgra8': 4}.get(encoding, 3)
    if data is None:
        rng = np.random.default_rng(height * 1000 + width)
        data = rng.integers(0, 255, height * width * channels, dtype=np.uint8).tobytes()
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id),
        height=height, width=width, encoding=encoding, is_bigendian=0, step=width * channels,
        data=data)


def stand_in_convert(msg, compressed: bool) -> np.ndarray:
    """Minimal image_to_rgb for tests that must not depend on image_convert: rgb8 only."""
    if compressed:
        raise MessageError('compressed images are not supported by the stand-in converter')
    if msg.encoding != 'rgb8':
        raise MessageError(f'unsupported encoding {msg.encoding!r}')
    if msg.height == 0 or msg.width == 0:
        raise MessageError('zero-size image')
    need = msg.height * msg.step
    if len(msg.data) < need:
        raise MessageError(f'data has {len(msg.data)} bytes, expected {need}')
    arr = np.frombuffer(msg.data, np.uint8, count=need).reshape(msg.height, msg.step)
    return arr[:, :msg.width * 3].reshape(msg.height, msg.width, 3)


def converter():
    """Return the real converter when image_convert exists, else the stand-in."""
    try:
        import ros2_gmskip.ros.image_convert  # noqa: F401
        from ros2_gmskip.ros.pipeline import default_convert
        return default_convert
    except ImportError:
        return stand_in_convert


# ------------------------------------------------------------------------------------------------
# camera publisher (run as a subprocess by test_dds_transport.py)

def publish_camera(domain: int, topic: str, hz: float, seconds: float, width: int,
                   height: int) -> int:
    """Publish rgb8 frames (header stamped with wall time) at `hz` for `seconds`; return count."""
    os.environ['CYCLONEDDS_URI'] = LOOPBACK_URI          # loopback only, whatever the caller set
    from ros2_gmskip.ros.dds_transport import DdsTransport

    transport = DdsTransport('fake_camera', [], domain_id=domain)
    pub = transport.create_publisher(topic, 'sensor_msgs/msg/Image', qos='sensor')
    frames = [np.full((height, width, 3), v, np.uint8).tobytes() for v in (40, 120, 200)]
    period = 1.0 / hz
    n = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        sec, nanosec = transport.now()
        pub.publish(transport.make_message(
            'sensor_msgs/msg/Image',
            header={'stamp': {'sec': sec, 'nanosec': nanosec}, 'frame_id': 'camera0/camera_link'},
            height=height, width=width, encoding='rgb8', is_bigendian=0, step=width * 3,
            data=frames[n % len(frames)]))
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))
    transport.shutdown()
    return n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description='test helpers')
    sub = parser.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('publish', help='publish fake camera frames over DDS')
    p.add_argument('--domain', type=int, required=True)
    p.add_argument('--topic', default='/sensing/camera/camera0/image_rect_color')
    p.add_argument('--hz', type=float, default=30.0)
    p.add_argument('--seconds', type=float, default=4.0)
    p.add_argument('--width', type=int, default=480)
    p.add_argument('--height', type=int, default=360)
    args = parser.parse_args(argv)
    n = publish_camera(args.domain, args.topic, args.hz, args.seconds, args.width, args.height)
    print(f'published {n}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
