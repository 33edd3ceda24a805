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
Replay: rosbag2 frames through DescriberCore into an output bag; the replay and demo verbs.

sqlite3 and MCAP, Image and CompressedImage; max and realtime rates; damaged bags and bad frames.
Fake backends only (the factory's 'fake:MS'), small images: the file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from ros2_gmskip import cli
from ros2_gmskip.errors import BagError, GmSkipError
from ros2_gmskip.ros.bag import (
    BagOutputWriter,
    COMPRESSED_TYPE,
    DEFAULT_START_NS,
    GROUND_TRUTH_TOPIC,
    header_msg,
    make_bag,
    TYPESTORE,
)
from ros2_gmskip.ros.image_convert import rgb_to_jpeg
from ros2_gmskip.ros.params import DescriberParams
from ros2_gmskip.ros.replay import (
    _Ticks,
    DEBUG_TOPIC,
    DESCRIPTION_TOPIC,
    DIAGNOSTICS_TOPIC,
    FLOAT64_STAMPED,
    read_output_bag,
    replay_bag,
    SCENE_TOPIC,
)
from ros2_gmskip.runtime.factory import create_backend
from ros2_gmskip.runtime.results import BackendInfo
from rosbags.rosbag2 import Reader

N, FPS, W, H = 8, 20.0, 64, 48
STEP_NS = int(1e9 / FPS)
STAMPS = [DEFAULT_START_NS + i * STEP_NS for i in range(N)]
PARAMS = DescriberParams()
TOPIC = '/sensing/camera/camera0/image_rect_color'


@pytest.fixture(scope='module')
def bags(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(storage, compressed) -> a make_bag bag of N small frames with ground truth."""
    root = tmp_path_factory.mktemp('replay_bags')
    out = {}
    for storage in ('mcap', 'sqlite3'):
        for compressed in (False, True):
            path = root / f'{storage}_{"jpeg" if compressed else "raw"}'
            make_bag(path, n=N, fps=FPS, compressed=compressed, storage=storage,
                     progress=False, width=W, height=H)
            out[(storage, compressed)] = path
    return out


def balanced(s: dict) -> bool:
    return s['described'] + s['dropped'] + s['rejected'] + s['errors'] == s['frames']


def by_topic(path: Path) -> dict[str, list[tuple[int, object]]]:
    topics: dict[str, list] = {}
    for topic, t, msg in read_output_bag(path):
        topics.setdefault(topic, []).append((t, msg))
    return topics


def stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# --- max rate --------------------------------------------------------------------------------

@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('compressed', [False, True])
def test_max_rate_describes_every_frame(bags, tmp_path, storage, compressed):
    out = tmp_path / 'out'
    s = replay_bag(bags[(storage, compressed)], out, create_backend('fake:1'), PARAMS,
                   storage=storage, progress=False)
    assert s['frames'] == s['received'] == s['described'] == N
    assert s['dropped'] == s['rejected'] == s['errors'] == 0 and s['bag_error'] is None
    assert s['msgtype'] == (COMPRESSED_TYPE if compressed else 'sensor_msgs/msg/Image')
    assert s['in_storage'] == s['out_storage'] == storage
    assert s['latency']['total_ms']['p50'] > 0 and s['tokens_per_s'] > 0

    with Reader(out) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
    assert types[DESCRIPTION_TOPIC] == types[SCENE_TOPIC] == 'std_msgs/msg/String'
    assert types[DIAGNOSTICS_TOPIC] == 'diagnostic_msgs/msg/DiagnosticArray'
    assert types[GROUND_TRUTH_TOPIC] == 'std_msgs/msg/String'
    for topic in DEBUG_TOPIC.values():
        assert types[topic] == FLOAT64_STAMPED
    assert not any('image' in t for t in types), 'input images are not copied'

    topics = by_topic(out)
    assert [m.data for _, m in topics[DESCRIPTION_TOPIC]] == ['a car ahead, clear day.'] * N
    scenes = [(t, json.loads(m.data)) for t, m in topics[SCENE_TOPIC]]
    got = [sc['stamp']['sec'] * 1_000_000_000 + sc['stamp']['nanosec'] for _, sc in scenes]
    assert got == STAMPS                                 # in order, input header stamps
    for (t, sc), stamp in zip(scenes, STAMPS):
        assert stamp < t < stamp + STEP_NS * 20, 'written after its input, in bag time'
        assert sc['frame_id'] == 'camera0/camera_optical_link' and sc['text']
        assert sc['latency']['processing_time_ms'] > 0
        assert sc['latency']['pipeline_latency_ms'] >= sc['latency']['processing_time_ms']
    for name in ('processing_time_ms', 'pipeline_latency_ms'):
        msgs = topics[DEBUG_TOPIC[name]]
        assert [stamp_ns(m.stamp) for _, m in msgs] == STAMPS
        assert all(m.data > 0 for _, m in msgs)
    assert len(topics[DEBUG_TOPIC['cyclic_time_ms']]) == N - 1     # no cyclic time for the first
    assert len(topics[GROUND_TRUTH_TOPIC]) == N
    assert [t for t, _ in topics[GROUND_TRUTH_TOPIC]] == STAMPS

    diags = topics[DIAGNOSTICS_TOPIC]
    assert 1 <= len(diags) <= 3                          # 0.35 s of bag: the final one (+ ticks)
    final = diags[-1][1].status[0]
    values = {kv.key: kv.value for kv in final.values}
    assert final.name == 'gmskip_describer: inference' and final.hardware_id == 'fake'
    assert final.level == 0 and values['received'] == values['described'] == str(N)
    assert values['dropped'] == '0' and 'total_ms_p50' in values


def test_diagnostics_once_per_bag_second(tmp_path):
    src = tmp_path / 'long'
    make_bag(src, n=25, fps=10.0, progress=False, width=W, height=H, truth_topic=None)
    s = replay_bag(src, tmp_path / 'out', create_backend('fake:0'), PARAMS, progress=False)
    assert s['described'] == 25 and s['outputs'].get(GROUND_TRUTH_TOPIC) is None
    diags = by_topic(tmp_path / 'out')[DIAGNOSTICS_TOPIC]
    ticks = [stamp_ns(m.header.stamp) for _, m in diags]
    assert ticks[:2] == [DEFAULT_START_NS + 1_000_000_000, DEFAULT_START_NS + 2_000_000_000]
    assert len(ticks) == 3 and ticks[2] > DEFAULT_START_NS + 2_400_000_000    # + the final one
    assert [t for t, _ in diags] == ticks
    values = {kv.key: kv.value for kv in diags[0][1].status[0].values}
    assert values['received'] == '10'                    # frames 0.0 .. 0.9 s


def test_diagnostic_ticks_skip_long_gaps():
    ticks = _Ticks(1.0)
    assert ticks.due(0) == []
    assert ticks.due(3_500_000_000) == [1_000_000_000, 2_000_000_000, 3_000_000_000]
    got = ticks.due(10_000 * 1_000_000_000)
    assert len(got) == 60 and got[0] == 4_000_000_000
    assert ticks.due(10_001 * 1_000_000_000) == [10_001 * 1_000_000_000]


# --- realtime rate ---------------------------------------------------------------------------

def test_realtime_drops_frames_when_the_backend_is_slower(bags, tmp_path):
    # 20 fps (50 ms apart) against 120 ms per frame: the newest frame wins, the rest are dropped
    s = replay_bag(bags[('mcap', False)], tmp_path / 'out', create_backend('fake:120'), PARAMS,
                   rate='realtime', progress=False)
    assert s['rate'] == 'realtime' and s['frames'] == s['received'] == N
    assert s['dropped'] > 0 and 0 < s['described'] < N and balanced(s)
    assert s['wall_s'] >= s['bag_s'] * 0.9            # paced by the bag, not as fast as possible
    scenes = [json.loads(m.data) for _, m in by_topic(tmp_path / 'out')[SCENE_TOPIC]]
    stamps = [sc['stamp']['sec'] * 1_000_000_000 + sc['stamp']['nanosec'] for sc in scenes]
    assert stamps == sorted(stamps) and set(stamps) <= set(STAMPS)
    assert stamps[-1] == STAMPS[-1]                      # the last frame is never left waiting
    # pipeline latency includes the wait for the worker: at least the processing time
    assert all(sc['latency']['pipeline_latency_ms'] >= sc['latency']['processing_time_ms']
               for sc in scenes)


def test_realtime_fast_backend_drops_nothing(tmp_path):
    # 4 fps: 250 ms between frames against ~1 ms of decoding, so even on a loaded machine a frame
    # is described before the next arrives (at 20 fps a busy CI machine dropped one frame in 8)
    bag = tmp_path / 'slow'
    make_bag(bag, n=N, fps=4.0, compressed=True, storage='sqlite3', progress=False, width=W,
             height=H)
    s = replay_bag(bag, tmp_path / 'out', create_backend('fake:0'), PARAMS, rate='realtime',
                   progress=False)
    assert s['described'] == N and s['dropped'] == 0 and balanced(s)


# --- bad frames, damaged bags, refusals -------------------------------------------------------

def test_corrupt_jpeg_is_rejected_and_counted(tmp_path):
    src = tmp_path / 'bad_jpeg'
    CompressedImage = TYPESTORE.types[COMPRESSED_TYPE]
    rng = np.random.default_rng(0)
    with BagOutputWriter(src, 'sqlite3') as bag:
        for i, stamp in enumerate(STAMPS):
            data = rgb_to_jpeg(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            if i == 3:
                data = b'\xff\xd8 this is not a jpeg'
            bag.write(TOPIC + '/compressed', COMPRESSED_TYPE, stamp, CompressedImage(
                header=header_msg(stamp, 'cam'), format='jpeg',
                data=np.frombuffer(data, np.uint8)))
    s = replay_bag(src, tmp_path / 'out', create_backend('fake:0'), PARAMS, progress=False)
    assert s['frames'] == N and s['rejected'] == 1 and s['described'] == N - 1
    assert s['errors'] == 0 and balanced(s) and s['last_error']
    scenes = by_topic(tmp_path / 'out')[SCENE_TOPIC]
    got = [json.loads(m.data)['stamp']['nanosec'] for _, m in scenes]
    assert len(got) == N - 1 and STAMPS[3] % 1_000_000_000 not in got


def test_backend_failures_are_counted(bags, tmp_path):
    class Broken:
        name = 'broken'
        info = BackendInfo(backend='broken', model_id='', plan_id='', engine_id='')

        def describe(self, image, prompt, max_new_tokens):
            raise RuntimeError('boom')

    s = replay_bag(bags[('mcap', True)], tmp_path / 'out', Broken(), PARAMS, progress=False)
    assert s['errors'] == N and s['described'] == 0 and 'boom' in s['last_error']


def damaged_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (storage_file,) = [p for p in dst.iterdir() if p.suffix in ('.mcap', '.db3')]
    with storage_file.open('r+b') as f:
        f.truncate(int(storage_file.stat().st_size * 0.6))
    return dst


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_bag_is_replayed_up_to_the_damage(bags, tmp_path, capsys, storage):
    cut = damaged_copy(bags[(storage, False)], tmp_path / 'cut')
    rc = cli.main(['replay', str(cut), '--out', str(tmp_path / 'out'), '--fake-backend-ms', '0',
                   '--json', '--no-progress'])
    captured = capsys.readouterr()
    assert rc == 0
    s = json.loads(captured.out.strip().splitlines()[-1])
    assert s['bag_error'] and '\n' not in s['bag_error']
    assert 0 < s['frames'] < N and s['described'] == s['frames'] and balanced(s)
    assert 'warning:' in captured.err and 'damaged' in captured.err
    assert 'bag error:' in captured.out
    assert len(by_topic(tmp_path / 'out')[SCENE_TOPIC]) == s['frames']


def test_refuses_an_existing_output(bags, tmp_path, capsys):
    (tmp_path / 'out').mkdir()
    with pytest.raises(BagError, match='exists'):
        replay_bag(bags[('mcap', False)], tmp_path / 'out', create_backend('fake:0'), PARAMS)
    rc = cli.main(['replay', str(bags[('mcap', False)]), '--out', str(tmp_path / 'out'),
                   '--fake-backend-ms', '0'])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith('error: output ')
    with pytest.raises(GmSkipError, match='rate'):
        replay_bag(bags[('mcap', False)], tmp_path / 'x', create_backend('fake:0'), PARAMS,
                   rate='fast')


def test_bad_input_fails_before_the_backend_loads(tmp_path, capsys):
    loaded = []
    with pytest.raises(BagError, match='no such rosbag'):
        replay_bag(tmp_path / 'missing', tmp_path / 'out', lambda: loaded.append(1), PARAMS)
    assert not loaded and not (tmp_path / 'out').exists()


def test_replay_verb_json_last_line(bags, tmp_path, capsys):
    rc = cli.main(['replay', str(bags[('sqlite3', False)]), '--out', str(tmp_path / 'out'),
                   '--storage', 'sqlite3', '--rate', 'max', '--fake-backend-ms', '1', '--json',
                   '--no-progress', '--prompt', 'describe the scene.', '--max-new-tokens', '3'])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.strip().splitlines()
    s = json.loads(lines[-1])
    assert s['described'] == N and s['out_storage'] == 'sqlite3' and s['backend'] == 'fake'
    assert s['tokens'] == 3 * N                         # --max-new-tokens reaches the backend
    assert set(s['latency']) >= {'preprocess_ms', 'vision_ms', 'prefill_ms',
                                 'decode_per_token_ms', 'total_ms', 'pipeline_latency_ms'}
    text = '\n'.join(lines[:-1])
    for word in ('frames 8: described 8, dropped 0, rejected 0, errors 0', 'decode/token',
                 'p99', 'tokens/s', 'backend fake', 'wrote '):
        assert word in text


def test_fake_backend_option_is_hidden(capsys):
    with pytest.raises(SystemExit):
        cli.main(['replay', '--help'])
    assert 'fake' not in capsys.readouterr().out


# --- demo ------------------------------------------------------------------------------------

def test_demo_smoke_with_fake_backend(tmp_path, capsys):
    out = tmp_path / 'demo_out'
    args = ['demo', '--fake-backend-ms', '1', '--n', '3', '--out', str(out), '--no-progress']
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    for i in range(1, 7):
        assert f'[{i}/6]' in text
    assert text.count('truth: ') == 3 and text.count('model: a car ahead, clear day.') == 3
    assert text.count('✓') + text.count('✗') == 3
    for word in ('p50', 'p90', 'max', 'preprocess', 'vision', 'prefill', 'decode/token', 'total',
                 'tokens/s', 'accuracy (main object named): ', '/3 = ',
                 str(out / 'descriptions')):
        assert word in text
    assert (out / 'camera0' / 'metadata.yaml').is_file()
    assert len(by_topic(out / 'descriptions')[SCENE_TOPIC]) == 3

    # a second run replaces what the first one made, and leaves other files alone
    (out / 'notes.txt').write_text('mine')
    assert cli.main(args) == 0
    assert (out / 'notes.txt').read_text() == 'mine'
    capsys.readouterr()

    # a bag the demo did not make is never removed
    (out / '.gmskip-demo.json').unlink()
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'not made by the demo' in err[0]
    assert (out / 'camera0' / 'metadata.yaml').is_file()


def test_demo_without_the_default_model_is_one_line(tmp_path, capsys, monkeypatch):
    import ros2_gmskip.runtime.defaults as defaults

    monkeypatch.setattr(defaults, 'default_model_dir', lambda: tmp_path / 'no_model')
    assert cli.main(['demo', '--out', str(tmp_path / 'demo_out')]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: the default model')
    assert not (tmp_path / 'demo_out').exists()          # failed before rendering anything
