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
Test rosbag2 I/O.

make_bag round trips (mcap, sqlite3; Image, CompressedImage), output bags, damaged bags read up
to the damage, one-line errors, and the make-bag verb.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from ros2_gmskip.errors import BagError
from ros2_gmskip.ros.bag import (
    BagImageReader,
    BagOutputWriter,
    COMPRESSED_TYPE,
    DEFAULT_START_NS,
    GROUND_TRUTH_TOPIC,
    header_msg,
    IMAGE_TYPE,
    make_bag,
    TYPESTORE,
)
from ros2_gmskip.ros.image_convert import compressed_to_rgb, image_to_rgb, rgb_to_image_fields
from rosbags.rosbag2 import Reader

N, FPS, W, H = 12, 5.0, 64, 48
TOPIC = '/sensing/camera/camera0/image_rect_color'
FRAME_ID = 'camera0/camera_optical_link'
STEP_NS = int(1e9 / FPS)


@pytest.fixture(scope='module')
def bags(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(storage, compressed) -> a make_bag bag of N small frames."""
    root = tmp_path_factory.mktemp('bags')
    out = {}
    for storage in ('mcap', 'sqlite3'):
        for compressed in (False, True):
            path = root / f'{storage}_{"jpeg" if compressed else "raw"}'
            summary = make_bag(path, n=N, fps=FPS, compressed=compressed, storage=storage,
                               progress=False, width=W, height=H)
            assert summary['n'] == N and summary['storage'] == storage
            out[(storage, compressed)] = path
    return out


def read_all(path: Path, topic: str | None = None) -> tuple[list, BagImageReader]:
    with BagImageReader(path, topic) as bag:
        frames = list(bag.frames())
    return frames, bag


def to_rgb(frame) -> np.ndarray:
    return compressed_to_rgb(frame.msg) if frame.compressed else image_to_rgb(frame.msg)


# --- make_bag round trips --------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('compressed', [False, True])
def test_make_bag_reads_back(bags, storage, compressed):
    from ros2_gmskip.scenes import render_scene, split_seeds

    frames, bag = read_all(bags[(storage, compressed)])
    assert bag.error is None and bag.skipped == 0 and not bag.salvaged
    assert bag.topic == TOPIC + ('/compressed' if compressed else '')
    assert bag.msgtype == (COMPRESSED_TYPE if compressed else IMAGE_TYPE)
    assert bag.message_count == N and len(frames) == N
    for i, frame in enumerate(frames):
        assert frame.compressed == compressed
        assert frame.stamp_ns == frame.timestamp_ns == DEFAULT_START_NS + i * STEP_NS
        assert frame.msg.header.frame_id == FRAME_ID
    seeds = split_seeds('test', 2)
    for frame, seed in zip(frames, seeds):
        rgb = to_rgb(frame)
        truth = render_scene(seed, width=W, height=H)[0]
        assert rgb.shape == (H, W, 3)
        if compressed:
            assert np.abs(rgb.astype(int) - truth).mean() < 12
        else:
            np.testing.assert_array_equal(rgb, truth)


def test_make_bag_ground_truth_topic(bags):
    with Reader(bags[('mcap', False)]) as reader:
        conns = [c for c in reader.connections if c.topic == GROUND_TRUTH_TOPIC]
        truths = [json.loads(TYPESTORE.deserialize_cdr(raw, c.msgtype).data)
                  for c, _, raw in reader.messages(connections=conns)]
    assert len(truths) == N
    assert truths[1]['stamp_ns'] == DEFAULT_START_NS + STEP_NS
    assert truths[0]['scene']['caption'] and truths[0]['frame_id'] == FRAME_ID


def test_path_forms(bags, tmp_path):
    folder = bags[('mcap', True)]
    storage_file = next(folder.glob('*.mcap'))
    assert len(read_all(storage_file)[0]) == N                  # the file inside the folder
    lone = tmp_path / 'no_metadata'                             # recorder never wrote metadata
    lone.mkdir()
    shutil.copy(storage_file, lone)
    frames, bag = read_all(lone)
    assert len(frames) == N and bag.error is None
    assert len(read_all(lone / storage_file.name)[0]) == N      # a lone storage file


def test_explicit_topic(bags):
    frames, bag = read_all(bags[('sqlite3', False)], TOPIC)
    assert bag.topic == TOPIC and len(frames) == N


# --- output bags -----------------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_output_writer_string_and_diagnostics(tmp_path, storage):
    String = TYPESTORE.types['std_msgs/msg/String']
    DiagnosticArray = TYPESTORE.types['diagnostic_msgs/msg/DiagnosticArray']
    DiagnosticStatus = TYPESTORE.types['diagnostic_msgs/msg/DiagnosticStatus']
    KeyValue = TYPESTORE.types['diagnostic_msgs/msg/KeyValue']
    path = tmp_path / 'out'
    with BagOutputWriter(path, storage) as out:
        for i in range(3):
            out.write('/gmskip_describer/output/description', 'std_msgs/msg/String',
                      100 + i, String(data=f'a car ahead {i}'))
        status = DiagnosticStatus(level=DiagnosticStatus.WARN, name='gmskip: describer',
                                  message='slow', hardware_id='gpu0',
                                  values=[KeyValue(key='p50_ms', value='41.5')])
        out.write('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 200,
                  DiagnosticArray(header=header_msg(200, 'base_link'), status=[status]))
    assert out.counts == {'/gmskip_describer/output/description': 3, '/diagnostics': 1}
    with Reader(path) as reader:
        got = [(c.topic, t, TYPESTORE.deserialize_cdr(raw, c.msgtype))
               for c, t, raw in reader.messages()]
    texts = [m.data for topic, _, m in got if topic.endswith('description')]
    assert texts == ['a car ahead 0', 'a car ahead 1', 'a car ahead 2']
    (diag,) = [(t, m) for topic, t, m in got if topic == '/diagnostics']
    assert diag[0] == 200 and diag[1].header.frame_id == 'base_link'
    assert diag[1].status[0].level == 1 and diag[1].status[0].values[0].value == '41.5'


def test_output_writer_refusals(tmp_path):
    with pytest.raises(BagError, match='exists'):
        BagOutputWriter(tmp_path)
    with pytest.raises(BagError, match='unknown rosbag storage'):
        BagOutputWriter(tmp_path / 'x', 'bag1')
    with BagOutputWriter(tmp_path / 'y') as out:
        with pytest.raises(BagError, match='unknown'):
            out.write('/t', 'autoware_foo_msgs/msg/Nope', 0, object())
    with pytest.raises(BagError, match='closed'):
        out.write('/t', 'std_msgs/msg/String', 0, TYPESTORE.types['std_msgs/msg/String']('x'))


# --- damaged bags: a prefix of the frames, `.error` set, no exception ------------------------

def damaged_copy(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    (storage_file,) = [p for p in dst.iterdir() if p.suffix in ('.mcap', '.db3')]
    size = storage_file.stat().st_size
    with storage_file.open('r+b') as f:
        if how == 'truncate':
            f.truncate(int(size * 0.6))
        else:                                   # overwrite 10% in the middle with 0xFF
            f.seek(int(size * 0.45))
            f.write(b'\xff' * int(size * 0.1))
    return dst


def assert_prefix(frames: list, intact: list, last_may_differ: bool = False) -> None:
    """
    Assert `frames` are the first frames of `intact`, pixel for pixel.

    The last one may hold the start of an overwritten span: its header is whole, its data is not.
    """
    assert len(frames) < len(intact)
    for i, (got, want) in enumerate(zip(frames, intact)):
        assert got.stamp_ns == want.stamp_ns
        if not (last_may_differ and i == len(frames) - 1):
            np.testing.assert_array_equal(to_rgb(got), to_rgb(want))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('compressed', [False, True])
def test_truncated_bag_gives_prefix(bags, tmp_path, storage, compressed):
    src = bags[(storage, compressed)]
    intact, _ = read_all(src)
    frames, bag = read_all(damaged_copy(src, tmp_path / 'cut', 'truncate'))
    assert bag.error and '\n' not in bag.error
    assert_prefix(frames, intact)
    if storage == 'mcap':                       # MCAP salvage keeps all whole records
        assert len(frames) >= N // 2


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_corrupt_bag_gives_prefix(bags, tmp_path, storage):
    # jpeg frames are small, so the overwritten span surely hits record / b-tree structure
    # (corrupt pixels of a raw Image are undetectable: rosbags writes no CRCs, sqlite has none)
    src = bags[(storage, True)]
    intact, _ = read_all(src)
    frames, bag = read_all(damaged_copy(src, tmp_path / 'corrupt', 'corrupt'))
    assert bag.error and '\n' not in bag.error
    assert_prefix(frames, intact, last_may_differ=True)


def test_killed_recorder_mcap_without_metadata(bags, tmp_path):
    src = bags[('mcap', False)]
    intact, _ = read_all(src)
    lone = tmp_path / 'killed'
    lone.mkdir()
    (storage_file,) = src.glob('*.mcap')
    data = storage_file.read_bytes()
    (lone / storage_file.name).write_bytes(data[:int(len(data) * 0.6)])
    frames, bag = read_all(lone)
    assert bag.salvaged and bag.error and bag.message_count == len(frames)
    assert_prefix(frames, intact)


def test_undeserializable_message_is_skipped(tmp_path):
    path = tmp_path / 'bad_msg'
    Image = TYPESTORE.types[IMAGE_TYPE]
    with BagOutputWriter(path) as out:
        conn_writer = out._writer
        for i in range(3):
            fields = rgb_to_image_fields(np.zeros((2, 2, 3), np.uint8))
            fields['data'] = np.frombuffer(fields['data'], np.uint8)
            out.write(TOPIC, IMAGE_TYPE, i, Image(header=header_msg(i), **fields))
        conn = out._connections[(TOPIC, IMAGE_TYPE)]
        conn_writer.write(conn, 3, b'\x00\x01\x00\x00' + b'\x07' * 5)   # CDR header, junk body
    frames, bag = read_all(path)
    assert len(frames) == 3 and bag.skipped == 1 and len(bag.skip_reasons) == 1
    assert bag.error is None


# --- one-line errors -------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(BagError, match='no such rosbag'):
        BagImageReader(tmp_path / 'nope')


def test_not_a_bag(tmp_path):
    with pytest.raises(BagError, match='not a rosbag2 folder'):
        BagImageReader(tmp_path)
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(b'hello' * 100)
    with pytest.raises(BagError, match='cannot open'):
        BagImageReader(junk)
    text = tmp_path / 'notes.txt'
    text.write_text('x')
    with pytest.raises(BagError, match='not a rosbag2'):
        BagImageReader(text)


def test_wrong_topic_lists_image_topics(bags):
    with pytest.raises(BagError) as info:
        BagImageReader(bags[('mcap', False)], '/sensing/camera/camera9/image_rect_color')
    assert TOPIC in str(info.value) and 'camera9' in str(info.value)
    with pytest.raises(BagError, match='not an image'):
        BagImageReader(bags[('mcap', False)], GROUND_TRUTH_TOPIC)


def test_several_or_no_image_topics(tmp_path):
    Image = TYPESTORE.types[IMAGE_TYPE]
    String = TYPESTORE.types['std_msgs/msg/String']
    fields = rgb_to_image_fields(np.zeros((2, 2, 3), np.uint8))
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    with BagOutputWriter(tmp_path / 'two') as out:
        for cam in ('camera0', 'camera1'):
            out.write(f'/sensing/camera/{cam}/image_rect_color', IMAGE_TYPE, 1,
                      Image(header=header_msg(1), **fields))
    with pytest.raises(BagError, match='2 image topics') as info:
        BagImageReader(tmp_path / 'two')
    assert 'camera0' in str(info.value) and 'camera1' in str(info.value)
    assert BagImageReader(tmp_path / 'two', '/sensing/camera/camera1/image_rect_color').topic
    with BagOutputWriter(tmp_path / 'none') as out:
        out.write('/chatter', 'std_msgs/msg/String', 1, String(data='hi'))
    with pytest.raises(BagError, match='no sensor_msgs/msg/Image'):
        BagImageReader(tmp_path / 'none')


# --- the make-bag verb -----------------------------------------------------------------------

def test_make_bag_verb(tmp_path, capsys):
    from ros2_gmskip.cli import main

    out = tmp_path / 'cli_bag'
    argv = ['make-bag', '--out', str(out), '--n', '3', '--fps', '2', '--compressed',
            '--storage', 'sqlite3', '--width', '48', '--height', '32', '--no-progress']
    assert main(argv) == 0
    assert 'wrote' in capsys.readouterr().out
    frames, bag = read_all(out)
    assert bag.topic == TOPIC + '/compressed' and len(frames) == 3
    assert frames[1].stamp_ns - frames[0].stamp_ns == 500_000_000
    assert main(argv) == 1                                       # exists: one-line error
    assert capsys.readouterr().err.startswith('error: output')
    tiny = ['make-bag', '--out', str(tmp_path / 'tiny'), '--width', '8', '--no-progress']
    assert main(tiny) == 1 and not (tmp_path / 'tiny').exists()
    assert capsys.readouterr().err.startswith('error: cannot render 8x480')
