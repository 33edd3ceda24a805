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

"""DescriberCore: newest-frame policy, counters, failures, diagnostics, bounded memory."""

from __future__ import annotations

from dataclasses import replace
import json
import logging
import threading
import time

from fakes import FakeBackend, image_msg, stand_in_convert
import pytest
from ros2_gmskip.errors import MessageError
from ros2_gmskip.ros.params import DescriberParams
from ros2_gmskip.ros.pipeline import DescriberCore, format_value, SceneOutput

PARAMS = DescriberParams()

DIAGNOSTIC_KEYS = {
    'input_rate_hz', 'output_rate_hz', 'received', 'described', 'dropped', 'rejected', 'errors',
    'tokens_per_s', 'backend', 'blocks_removed', 'model_id', 'plan_id', 'engine_id', 'last_error',
    'token_skip', 'decoder_graph', 'draft_tokens', 'seconds_since_last_image',
    'total_ms_p50', 'total_ms_p90', 'total_ms_p99', 'total_ms_max', 'vision_ms_p50',
    'prefill_ms_p99', 'preprocess_ms_max', 'decode_per_token_ms_p90',
}


def make_core(backend=None, params=PARAMS, outputs=None, **kw) -> DescriberCore:
    outputs = [] if outputs is None else outputs
    kw.setdefault('convert', stand_in_convert)
    return DescriberCore(backend, params, publish=outputs.append, **kw)


def wait_until(cond, timeout_s=5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def balanced(c: dict) -> bool:
    return c['described'] + c['dropped'] + c['rejected'] + c['errors'] + c['pending'] == \
        c['received']


def test_newest_frame_wins_and_drops_are_counted():
    backend = FakeBackend(delay_ms=40)
    outputs = []
    core = make_core(backend, outputs=outputs)
    core.start()
    try:
        for i in range(60):
            core.on_image(image_msg(sec=1000 + i))
            assert balanced(core.counts())
            time.sleep(0.004)
        assert wait_until(lambda: core.counts()['pending'] == 0)
    finally:
        core.stop()
    c = core.counts()
    assert c['received'] == 60
    assert c['dropped'] > 0 and c['described'] > 0
    assert c['described'] + c['dropped'] + c['rejected'] + c['errors'] == c['received']
    assert c['described'] < 30            # 40 ms per frame against frames every ~4 ms
    # the last frame fed is the last one described: nothing stale was queued behind it
    assert outputs[-1].stamp_sec == 1059
    assert len(outputs) == c['described']


class BlockingBackend(FakeBackend):
    """describe() waits until released: shows on_image never waits for inference."""

    def __init__(self):
        super().__init__(delay_ms=0)
        self.entered = threading.Event()
        self.release = threading.Event()

    def describe(self, image, prompt='', max_new_tokens=48):
        self.entered.set()
        assert self.release.wait(10), 'never released'
        return super().describe(image, prompt, max_new_tokens)


def test_on_image_never_waits_for_inference():
    backend = BlockingBackend()
    core = make_core(backend)
    core.start()
    try:
        core.on_image(image_msg(sec=1))
        assert backend.entered.wait(5)
        frames = [image_msg(sec=i) for i in range(2, 52)]
        feeder = threading.Thread(target=lambda: [core.on_image(f) for f in frames])
        feeder.start()
        feeder.join(5)
        assert not feeder.is_alive(), 'on_image blocked while the backend was busy'
        assert core.counts() == {'received': 51, 'described': 0, 'dropped': 49, 'rejected': 0,
                                 'errors': 0, 'pending': 2}
        backend.release.set()
        assert wait_until(lambda: core.counts()['described'] == 2)
    finally:
        backend.release.set()
        core.stop()
    assert core.last_output.stamp_sec == 51


def test_stop_counts_a_waiting_frame_as_dropped():
    core = make_core(FakeBackend(delay_ms=1))
    core.on_image(image_msg())
    core.on_image(image_msg())       # worker not started: the first one is dropped now
    core.stop()                      # the second was still waiting
    assert core.counts() == {'received': 2, 'described': 0, 'dropped': 2, 'rejected': 0,
                             'errors': 0, 'pending': 0}


def test_bad_message_is_rejected_not_raised(caplog):
    backend = FakeBackend(delay_ms=1)
    outputs = []
    core = make_core(backend, outputs=outputs)
    core.start()
    try:
        core.on_image(image_msg(encoding='yuv9000'))
        assert wait_until(lambda: core.counts()['rejected'] == 1)
        core.on_image(image_msg(height=0))
        assert wait_until(lambda: core.counts()['rejected'] == 2)
        core.on_image(image_msg(sec=7))
        assert wait_until(lambda: core.counts()['described'] == 1)
    finally:
        core.stop()
    assert 'zero-size' in core.last_error
    assert backend.calls == 1
    assert outputs[0].stamp_sec == 7


def test_rejections_are_logged_rate_limited(caplog):
    clock = [0.0]
    core = make_core(FakeBackend(delay_ms=0), clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger='ros2_gmskip.ros.pipeline'):
        for _ in range(10):
            core.process(image_msg(encoding='nope'), False)
        clock[0] = 10.0
        core.process(image_msg(encoding='nope'), False)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert "unsupported encoding 'nope'" in warnings[0]
    assert '9 similar suppressed' in warnings[1]
    assert core.rejected == 11


def test_real_converter_feeds_rgb(monkeypatch):
    pytest.importorskip('ros2_gmskip.ros.image_convert')
    from ros2_gmskip.ros.pipeline import default_convert

    backend = FakeBackend(delay_ms=0)
    core = make_core(backend, convert=default_convert)
    out = core.process(image_msg(height=6, width=8, encoding='bgr8'), False)
    assert out is not None and backend.shapes == [(6, 8, 3)]
    assert core.process(image_msg(encoding='no_such_encoding'), False) is None
    assert core.rejected == 1 and 'no_such_encoding' in core.last_error


def test_backend_exception_is_counted_and_worker_continues():
    backend = FakeBackend(delay_ms=1, fail_first=2)
    core = make_core(backend)
    core.start()
    try:
        for i in range(3):
            core.on_image(image_msg(sec=i + 1))
            assert wait_until(lambda: core.counts()['pending'] == 0)
    finally:
        core.stop()
    c = core.counts()
    assert (c['errors'], c['described'], c['received']) == (2, 1, 3)
    assert 'fake backend failure #2' in core.last_error
    d = core.diagnostics()
    assert d['level'] == 'OK'
    assert 'fake backend failure' in d['values']['last_error']


def test_scene_output_fields():
    backend = FakeBackend(delay_ms=0)
    outputs = []
    core = make_core(backend, outputs=outputs, wall_clock=lambda: 100.75)
    out = core.process(image_msg(sec=100, nanosec=500_000_000, frame_id='cam0'), False)
    assert out is outputs[0]
    assert out.pipeline_latency_ms == pytest.approx(250.0)
    assert out.cyclic_time_ms != out.cyclic_time_ms          # NaN for the first output
    scene = json.loads(json.dumps(out.scene_dict()))
    assert scene['stamp'] == {'sec': 100, 'nanosec': 500_000_000}
    assert scene['frame_id'] == 'cam0'
    assert scene['text'] == backend.text and scene['objects'] == []
    assert scene['model_id'] == 'fake-model@0123abcd' and scene['plan_id'] == 'fake-plan@4567'
    assert {'preprocess_ms', 'vision_ms', 'prefill_ms', 'decode_ms', 'total_ms',
            'processing_time_ms', 'pipeline_latency_ms'} <= set(scene['latency'])
    out2 = core.process(image_msg(), False)                   # unstamped image
    assert out2.cyclic_time_ms >= 0
    assert out2.scene_dict()['latency']['pipeline_latency_ms'] is None


def test_publish_failure_does_not_stop_the_core():
    def publish(_out: SceneOutput):
        raise RuntimeError('writer gone')

    core = DescriberCore(FakeBackend(delay_ms=0), PARAMS, publish=publish,
                         convert=stand_in_convert)
    assert core.process(image_msg(), False) is not None
    assert core.described == 1 and core.publish_errors == 1
    assert 'writer gone' in core.last_error


def test_diagnostics_ok_and_keys():
    core = make_core(FakeBackend(delay_ms=0))
    d = core.diagnostics()
    assert d['level'] == 'OK' and d['message'] == 'waiting for images'
    core.on_image(image_msg())
    core._slot = None                                # as if the worker had taken it
    core.process(image_msg(), False)
    d = core.diagnostics()
    assert d['level'] == 'OK', d
    assert DIAGNOSTIC_KEYS <= set(d['values'])
    assert d['values']['backend'] == 'fake'
    assert d['values']['blocks_removed'] == [5, 6, 7]
    assert d['values']['described'] == 1
    assert d['values']['total_ms_p50'] >= 0


def test_diagnostics_warn_on_drops():
    core = make_core(FakeBackend(delay_ms=0))         # worker not started: every frame replaced
    for _ in range(20):
        core.on_image(image_msg())
    d = core.diagnostics()
    assert d['level'] == 'WARN' and 'dropping' in d['message']
    assert d['values']['dropped'] == 19


def test_diagnostics_warn_on_latency():
    core = make_core(FakeBackend(delay_ms=5), params=replace(PARAMS, latency_warn_ms=1.0))
    core.process(image_msg(), False)
    d = core.diagnostics()
    assert d['level'] == 'WARN' and 'processing took' in d['message']


def test_diagnostics_warn_when_the_camera_stops():
    now = [100.0]
    core = make_core(FakeBackend(delay_ms=0), params=replace(PARAMS, input_timeout_s=2.0),
                     clock=lambda: now[0])
    assert core.diagnostics()['level'] == 'OK'          # just started: waiting for images
    now[0] += 2.5
    d = core.diagnostics()
    assert d['level'] == 'WARN' and 'no image yet for 2.5 s' in d['message'], d['message']
    core.on_image(image_msg())
    core.process(*core._slot[:2])
    core._slot = None
    assert core.diagnostics()['level'] == 'OK'
    now[0] += 1.9
    assert core.diagnostics()['level'] == 'OK'
    now[0] += 0.2
    d = core.diagnostics()
    assert d['level'] == 'WARN' and d['message'] == 'no image for 2.1 s (> input_timeout_s 2 s)'
    assert d['values']['seconds_since_last_image'] == pytest.approx(2.1)


def test_diagnostics_error_when_last_frames_all_failed():
    core = make_core(FakeBackend(fail=True), params=replace(PARAMS, error_window=3))
    for i in range(3):
        assert core.diagnostics()['level'] != 'ERROR'
        core.process(image_msg(), False)
    d = core.diagnostics()
    assert d['level'] == 'ERROR' and 'last 3 frames failed' in d['message']
    assert d['values']['errors'] == 3


def test_diagnostics_error_without_backend():
    core = make_core(None)
    assert core.diagnostics()['level'] == 'ERROR'
    core.process(image_msg(), False)
    assert core.errors == 1 and core.last_error == 'no backend'
    assert core.diagnostics()['values']['backend'] == 'none'


def test_memory_stays_bounded():
    params = replace(PARAMS, stats_window=50, error_window=5)
    core = make_core(FakeBackend(delay_ms=0), params=params)
    core.start()
    try:
        for i in range(2000):
            core.on_image(image_msg(height=4, width=4, sec=i + 1))
            if i % 100 == 0:
                time.sleep(0.002)
                assert max(core.internal_sizes().values()) <= 512
        assert wait_until(lambda: core.counts()['pending'] == 0)
    finally:
        core.stop()
    sizes = core.internal_sizes()
    assert sizes['slot'] == 0
    assert sizes['drops'] <= 100 and sizes['outcomes'] <= 5 and sizes['stats'] <= 50
    assert sizes['input_rate'] <= 512 and sizes['output_rate'] <= 512
    assert sizes['log_keys'] <= 3
    c = core.counts()
    assert c['received'] == 2000 and c['described'] + c['dropped'] == 2000


def test_convert_errors_of_other_types_are_rejections():
    def convert(msg, compressed):
        raise MessageError('short data: 3 of 12 bytes')

    core = make_core(FakeBackend(delay_ms=0), convert=convert)
    assert core.process(image_msg(), False) is None
    assert core.rejected == 1 and core.last_error.endswith('short data: 3 of 12 bytes')


def test_format_value():
    assert format_value(1.23456) == '1.235'
    assert format_value(float('nan')) == 'nan'
    assert format_value([1, 2]) == '1,2'
    assert format_value(None) == '' and format_value(True) == 'true' and format_value(3) == '3'


def test_create_backend_maps_parameters(monkeypatch, tmp_path):
    from ros2_gmskip.ros import node
    from ros2_gmskip.runtime import defaults, factory

    calls = []
    monkeypatch.setattr(factory, 'create_backend', lambda kind, **kw: calls.append((kind, kw)))
    monkeypatch.setattr(defaults, 'default_plan_path', lambda: tmp_path / 'shipped.json')
    exported = []
    monkeypatch.setattr(defaults, 'ensure_bundle', lambda model, plan, fused_weights:
                        exported.append(fused_weights) or tmp_path / 'bundle')

    node.create_backend(replace(PARAMS, backend='onnxruntime', device='cpu'))
    kind, kw = calls[-1]
    assert kind == 'onnxruntime' and kw['providers'] == 'cpu' and kw['draft_tokens'] == 4
    node.create_backend(replace(PARAMS, backend='onnxruntime', device='cpu', draft_tokens=0))
    assert calls[-1][1]['draft_tokens'] == 0
    assert kw['bundle'] == tmp_path / 'bundle' and kw['plan'] == tmp_path / 'shipped.json'
    assert kw['model'] is None and kw['engine'] is None and kw['build_only'] is False
    node.create_backend(replace(PARAMS, backend='onnxruntime', device='cpu',
                                fused_weights='int4'))
    node.create_backend(replace(PARAMS, backend='tensorrt', fused_weights='int4'))
    assert exported == ['fp32', 'fp32', 'int4', 'fp32']   # engines build from decoder.onnx

    node.create_backend(replace(PARAMS, backend='torch', device='cuda', gpu_id=1,
                                model_path=str(tmp_path)), build_only=True)
    kind, kw = calls[-1]
    assert kind == 'torch' and kw['device'] == 'cuda:1' and kw['build_only'] is True
    assert kw['model'] == tmp_path and kw['plan'] is None and kw['bundle'] is None
