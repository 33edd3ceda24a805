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
The describer's core, independent of rclpy / DDS: newest-frame hand-off, one worker, statistics.

A subscription callback calls `DescriberCore.on_image(msg, compressed)`, which only stores the
message in a one-slot holder and returns (it never blocks on inference). One worker thread takes
the newest frame, converts it to RGB, runs `backend.describe` and calls `publish(SceneOutput)`. A
frame that is still waiting when a newer one arrives is dropped and counted: a VLM at a few Hz
behind a 30 Hz camera always describes the most recent view, and latency never builds up in a
queue.

Every frame ends in exactly one counter once the worker is stopped:
    received == described + dropped + rejected + errors        (+ pending while running)
Memory is bounded: one waiting frame, and deques with a maxlen for everything recent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import functools
import logging
import math
import threading
import time
from typing import Any, Callable

import numpy as np
from ros2_gmskip.errors import GmSkipError, MessageError
from ros2_gmskip.runtime.ladder import AUTO, rung_policy
from ros2_gmskip.runtime.results import Result
from ros2_gmskip.runtime.stats import LatencyStats, RateMeter, STAGES

log = logging.getLogger(__name__)

OK, WARN, ERROR = 'OK', 'WARN', 'ERROR'
LEVELS = {OK: 0, WARN: 1, ERROR: 2}       # diagnostic_msgs/DiagnosticStatus levels
DROP_WINDOW = 100                          # frames the drop ratio is computed over
LOG_PERIOD_S = 5.0                         # repeated warnings at most this often
RATE_WINDOW_S = 5.0


@dataclass
class SceneOutput:
    """What the worker publishes for one described frame."""

    stamp_sec: int                   # header stamp of the input image
    stamp_nanosec: int
    frame_id: str
    text: str
    tokens: int
    latency: dict[str, float]        # Latency.to_dict(): preprocess/vision/prefill/decode/total ms
    objects: list[dict] = field(default_factory=list)   # parsed from the text (object_parser)
    model_id: str = ''
    plan_id: str = ''
    engine_id: str = ''
    processing_time_ms: float = 0.0      # conversion + inference in the worker
    queue_wait_ms: float = 0.0           # from on_image to the worker taking the frame
    pipeline_latency_ms: float = math.nan  # wall clock now - header stamp (NaN when stamp is 0)
    cyclic_time_ms: float = math.nan     # since the previous output (NaN for the first)
    rung: dict | None = None             # plan-ladder rung that ran (Rung.to_dict); None: none

    def scene_dict(self) -> dict[str, Any]:
        """Return the JSON object published on ~/output/scene."""
        return {
            'stamp': {'sec': self.stamp_sec, 'nanosec': self.stamp_nanosec},
            'frame_id': self.frame_id,
            'text': self.text,
            'tokens': self.tokens,
            'objects': list(self.objects),
            'latency': dict(self.latency, processing_time_ms=self.processing_time_ms,
                            queue_wait_ms=self.queue_wait_ms,
                            pipeline_latency_ms=_finite_or_none(self.pipeline_latency_ms)),
            'model_id': self.model_id,
            'plan_id': self.plan_id,
            'engine_id': self.engine_id,
            'rung': self.rung,
        }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def default_convert(msg: Any, compressed: bool, max_pixels: int | None = None) -> np.ndarray:
    """
    Convert a ROS Image / CompressedImage (any object with their fields) to RGB uint8 (H, W, 3).

    `max_pixels`: frames with more pixels are refused (None: images.DEFAULT_MAX_PIXELS).
    """
    from ros2_gmskip.images import DEFAULT_MAX_PIXELS
    from ros2_gmskip.ros.image_convert import compressed_to_rgb, image_to_rgb

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return compressed_to_rgb(msg, limit) if compressed else image_to_rgb(msg, limit)


class _BoundedRateMeter(RateMeter):
    """RateMeter whose history also has a maxlen (it only prunes by age when asked for a rate)."""

    def __init__(self, window_s: float, maxlen: int = 512) -> None:
        super().__init__(window_s)
        self._stamps = deque(maxlen=maxlen)


class _RateLimitedLog:
    """Logs a message per key at most once per `period_s`, saying how many were suppressed."""

    def __init__(self, logger: Any, period_s: float = LOG_PERIOD_S, clock=time.monotonic) -> None:
        self.logger = logger
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: str, key: str, text: str, exc: bool = False) -> None:
        """Log `text` at `level` ('warning', 'error', ...); `exc`: with the current traceback."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        text += f' ({n} similar suppressed)' if n else ''
        if exc and isinstance(self.logger, logging.Logger):
            getattr(self.logger, level)(text, exc_info=True)
        else:
            getattr(self.logger, level)(text)


class DescriberCore:
    """
    Newest-frame hand-off + worker + counters + diagnostics (see the module docstring).

    `params` needs: prompt, max_new_tokens, input_timeout_s, latency_warn_ms, drop_warn_ratio,
    error_window, stats_window, latency_budget_ms, rung, and optionally max_image_pixels and
    object_parser (a `DescriberParams`). `publish` is called on the worker thread. The backend's
    `check_request` (where it has one) must accept the prompt and max_new_tokens: PromptError
    otherwise, before any frame. A backend with a plan ladder (`backend.ladder`,
    describe(..., rung=)) runs the rung `runtime.ladder.rung_policy` picks: fixed, or chosen per
    frame to fit the budget.
    """

    def __init__(self, backend: Any, params: Any, publish: Callable[[SceneOutput], None],
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 convert: Callable[[Any, bool], np.ndarray] = default_convert,
                 logger: Any = None) -> None:
        self.backend = backend
        self.params = params
        self.publish = publish
        self.clock = clock
        self.wall_clock = wall_clock
        if convert is default_convert:
            convert = functools.partial(default_convert,
                                        max_pixels=getattr(params, 'max_image_pixels', None))
        self.convert = convert
        self.parse_objects = _object_parser(getattr(params, 'object_parser', ''))
        self.check_request(params)
        self.logger = logger or log
        self._log = _RateLimitedLog(self.logger, clock=clock)
        self._cond = threading.Condition(threading.Lock())
        self._slot: tuple[Any, bool, float] | None = None   # (msg, compressed, receive time)
        self._in_flight = False
        self._stopping = False
        self._worker: threading.Thread | None = None
        # counters
        self.received = 0
        self.described = 0
        self.dropped = 0
        self.rejected = 0
        self.errors = 0
        self.publish_errors = 0
        self.parse_errors = 0        # object parser failures (the frame is still described)
        # recent history, all bounded
        self.stats = LatencyStats(window=params.stats_window)
        self._input_rate = _BoundedRateMeter(RATE_WINDOW_S)
        self._output_rate = _BoundedRateMeter(RATE_WINDOW_S)
        self._drops: deque[bool] = deque(maxlen=DROP_WINDOW)        # per frame: dropped?
        self._outcomes: deque[bool] = deque(maxlen=params.error_window)  # per processed: ok?
        self.last_error = ''
        self.last_output: SceneOutput | None = None
        self._last_output_t: float | None = None
        self._last_input_t = clock()     # input timeout: counted from the start until a frame
        # plan ladder: LadderError (one line) now when the parameters do not fit the backend
        self.ladder = getattr(backend, 'ladder', None) if backend is not None else None
        self.chooser, self.fixed_rung = rung_policy(
            self.ladder, float(getattr(params, 'latency_budget_ms', 0.0)),
            getattr(params, 'rung', AUTO))

    def check_request(self, params: Any) -> None:
        """Raise PromptError if the backend says params' prompt + max_new_tokens do not fit."""
        check = getattr(self.backend, 'check_request', None)
        if check is not None:
            check(params.prompt, params.max_new_tokens)

    # ------------------------------------------------------------------------------------------
    # subscription side: never blocks on inference

    def on_image(self, msg: Any, compressed: bool = False) -> None:
        """Store `msg` as the newest frame; a frame still waiting is dropped (and counted)."""
        now = self.clock()
        with self._cond:
            self.received += 1
            self._input_rate.tick(now)
            self._last_input_t = now
            if self._slot is not None:
                self.dropped += 1
                self._drops.append(True)
            self._slot = (msg, compressed, now)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Frames received but not yet counted anywhere (waiting + being processed)."""
        with self._cond:
            return int(self._slot is not None) + int(self._in_flight)

    def counts(self) -> dict[str, int]:
        """All counters at one instant (received == the sum of the others)."""
        with self._cond:
            return {'received': self.received, 'described': self.described,
                    'dropped': self.dropped, 'rejected': self.rejected, 'errors': self.errors,
                    'pending': int(self._slot is not None) + int(self._in_flight)}

    # ------------------------------------------------------------------------------------------
    # worker

    def start(self) -> None:
        with self._cond:
            if self._worker is not None:
                return
            self._stopping = False
            self._worker = threading.Thread(target=self._run, name='gmskip-worker', daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker (after the frame in flight); a still-waiting frame counts as dropped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout_s)
            if worker.is_alive():
                self.logger.warning(f'worker still busy after {timeout_s:.0f} s; leaving it')
        with self._cond:
            self._worker = None
            if self._slot is not None:
                self._slot = None
                self.dropped += 1
                self._drops.append(True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                msg, compressed, t_recv = self._slot
                self._slot = None
                self._in_flight = True
                self._drops.append(False)
            try:
                self.process(msg, compressed, t_recv)
            except Exception as err:  # keep the worker alive whatever happens
                with self._cond:
                    counted = not self._in_flight
                if counted:           # failed after the frame was counted (not expected)
                    self._log('error', 'worker', f'{type(err).__name__}: {err}', True)
                else:
                    self._failed('errors', f'{type(err).__name__}: {err}', exc=True)
            finally:
                with self._cond:
                    self._in_flight = False

    def process(self, msg: Any, compressed: bool,
                t_recv: float | None = None) -> SceneOutput | None:
        """Convert, describe, publish one frame (the worker's body; callable directly in tests)."""
        t0 = self.clock()
        try:
            rgb = self.convert(msg, compressed)
        except (GmSkipError, ValueError, TypeError, AttributeError) as err:
            reason = str(err) if isinstance(err, MessageError) else f'{type(err).__name__}: {err}'
            self._failed('rejected', f'rejected input image: {reason}')
            return None
        if self.backend is None:
            self._failed('errors', 'no backend')
            return None
        rung = self.chooser.next_rung() if self.chooser is not None else self.fixed_rung
        try:
            result: Result = self.backend.describe(rgb, self.params.prompt,
                                                   self.params.max_new_tokens,
                                                   **({} if rung is None else {'rung': rung}))
        except Exception as err:
            name = getattr(self.backend, 'name', '?')
            self._failed('errors', f'backend {name} failed: {type(err).__name__}: {err}',
                         exc=not isinstance(err, GmSkipError))
            return None
        t1 = self.clock()
        if self.chooser is not None:
            self.chooser.record(rung, (t1 - t0) * 1e3)
        objects = self._objects(result.text)
        stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
        sec, nanosec = int(getattr(stamp, 'sec', 0)), int(getattr(stamp, 'nanosec', 0))
        info = self.backend.info
        with self._cond:
            cyclic = (t1 - self._last_output_t) * 1e3 if self._last_output_t is not None \
                else math.nan
            self._last_output_t = t1
            out = SceneOutput(
                stamp_sec=sec, stamp_nanosec=nanosec,
                frame_id=str(getattr(getattr(msg, 'header', None), 'frame_id', '')),
                text=result.text, tokens=result.tokens, latency=result.latency.to_dict(),
                objects=objects, model_id=info.model_id, plan_id=info.plan_id,
                engine_id=info.engine_id,
                processing_time_ms=(t1 - t0) * 1e3,
                queue_wait_ms=(t0 - t_recv) * 1e3 if t_recv is not None else 0.0,
                pipeline_latency_ms=(self.wall_clock() - (sec + nanosec * 1e-9)) * 1e3
                if (sec or nanosec) else math.nan,
                cyclic_time_ms=cyclic,
                rung=None if rung is None else self.ladder.rungs[rung].to_dict())
            self.described += 1
            self._in_flight = False      # counted: keeps received == sum of counters + pending
            self.stats.add(result)
            self._output_rate.tick(t1)
            self._outcomes.append(True)
            self.last_output = out
        try:
            self.publish(out)
        except Exception as err:  # a publisher problem is not the frame's fault
            with self._cond:
                self.publish_errors += 1
                self.last_error = f'publish failed: {type(err).__name__}: {err}'
            self._log('error', 'publish', self.last_error)
        return out

    def _objects(self, text: str) -> list[dict]:
        """Return the objects the parser finds in `text`; [] (logged, counted) if it fails."""
        if self.parse_objects is None:
            return []
        from ros2_gmskip.scenes.parse import checked_objects, ParserError
        try:
            return checked_objects(self.parse_objects, text)
        except ParserError as err:
            with self._cond:
                self.parse_errors += 1
            self._log('warning', 'parse', f'objects not parsed: {err}')
            return []

    def _failed(self, counter: str, reason: str, exc: bool = False) -> None:
        with self._cond:
            setattr(self, counter, getattr(self, counter) + 1)
            self._in_flight = False
            self._outcomes.append(False)
            self.last_error = reason
        self._log('warning' if counter == 'rejected' else 'error', counter, reason, exc)

    # ------------------------------------------------------------------------------------------
    # diagnostics

    def diagnostics(self) -> dict[str, Any]:
        """{'level': OK|WARN|ERROR, 'message': str, 'values': {key: value}} for /diagnostics."""
        now = self.clock()
        with self._cond:
            summary = self.stats.summary()    # under the lock: the worker appends to it
            drops = list(self._drops)
            outcomes = list(self._outcomes)
            last = self.last_output
            values: dict[str, Any] = {
                'input_rate_hz': self._input_rate.rate_hz(now),
                'output_rate_hz': self._output_rate.rate_hz(now),
                'received': self.received,
                'described': self.described,
                'dropped': self.dropped,
                'rejected': self.rejected,
                'errors': self.errors,
                'pending': int(self._slot is not None) + int(self._in_flight),
                'drop_ratio': sum(drops) / len(drops) if drops else 0.0,
                'object_parse_errors': self.parse_errors,
                'seconds_since_last_image': now - self._last_input_t,
            }
            last_error = self.last_error
        for stage in STAGES:
            for q, v in summary[stage].items():
                values[f'{stage}_{q}'] = v
        values['tokens_per_s'] = summary['tokens_per_s']['mean']
        values['processing_time_ms'] = last.processing_time_ms if last else math.nan
        values['pipeline_latency_ms'] = last.pipeline_latency_ms if last else math.nan
        info = self.backend.info if self.backend is not None else None
        values['backend'] = getattr(self.backend, 'name', 'none') if self.backend else 'none'
        for key in ('blocks_removed', 'model_id', 'plan_id', 'engine_id', 'decoder_graph',
                    'draft_tokens'):
            value = getattr(info, key) if info is not None else ''
            values[key] = list(value) if isinstance(value, tuple) else value
        values['token_skip'] = info.tokens.describe() if info is not None else ''
        rung = self.rung_values()
        values.update(rung)
        values['last_error'] = last_error

        window = self.params.error_window
        warnings = []
        if self.backend is None:
            level, message = ERROR, 'no backend'
        elif len(outcomes) >= window and not any(outcomes):
            level, message = ERROR, f'last {window} frames failed: {last_error}'
        else:
            silent_s = values['seconds_since_last_image']
            if silent_s > self.params.input_timeout_s:
                what = 'no image yet' if values['received'] == 0 else 'no image'
                warnings.append(f'{what} for {silent_s:.1f} s '
                                f'(> input_timeout_s {self.params.input_timeout_s:g} s)')
            if len(drops) >= 10 and values['drop_ratio'] > self.params.drop_warn_ratio:
                warnings.append(f'dropping {values["drop_ratio"]:.0%} of input frames '
                                f'(> {self.params.drop_warn_ratio:.0%})')
            if last is not None and last.processing_time_ms > self.params.latency_warn_ms:
                warnings.append(f'processing took {last.processing_time_ms:.0f} ms '
                                f'(> {self.params.latency_warn_ms:.0f} ms)')
            if rung['rung_over_budget']:
                warnings.append(f'p90 {rung["rung_p90_ms"]:.0f} ms over the latency budget '
                                f'{rung["latency_budget_ms"]:g} ms on the fastest rung')
            if warnings:
                level, message = WARN, '; '.join(warnings)
            elif values['received'] == 0:
                level, message = OK, 'waiting for images'
            else:
                level, message = OK, f'describing at {values["output_rate_hz"]:.1f} Hz'
        return {'level': level, 'message': message, 'values': values}

    def set_latency_budget(self, budget_ms: float) -> None:
        """Apply a new latency_budget_ms while running (LadderError if the ladder cannot)."""
        if self.chooser is not None and budget_ms > 0:
            self.chooser.set_budget(budget_ms)
        else:
            self.chooser, self.fixed_rung = rung_policy(self.ladder, budget_ms,
                                                        getattr(self.params, 'rung', AUTO))

    def rung_values(self) -> dict[str, Any]:
        """Return the plan-ladder keys of the diagnostics (empty strings without a ladder)."""
        chooser = self.chooser
        budget = chooser.budget_ms if chooser is not None else float(
            getattr(self.params, 'latency_budget_ms', 0.0))
        state = chooser.state() if chooser is not None else {}
        rung = state.get('rung', self.fixed_rung)
        info = self.ladder.rungs[rung] if rung is not None else None
        return {
            'latency_budget_ms': budget,
            'rung_mode': state.get('mode', 'fixed' if rung is not None else 'off'),
            'rung': '' if rung is None else rung,
            'rungs': '' if self.ladder is None else len(self.ladder.rungs),
            'rung_blocks_removed': '' if info is None else list(info.removed_blocks),
            'rung_val_score': '' if info is None or info.score is None else info.score,
            'rung_p90_ms': state.get('p90_ms', math.nan),
            'rung_switches': state.get('switches', 0),
            'rung_over_budget': bool(state.get('over_budget', False)),
            'rung_reason': state.get('reason', ''),
        }

    def internal_sizes(self) -> dict[str, int]:
        """Sizes of every container that grows with traffic (a test checks they stay bounded)."""
        return {
            'slot': int(self._slot is not None),
            'drops': len(self._drops),
            'outcomes': len(self._outcomes),
            'input_rate': len(self._input_rate._stamps),
            'output_rate': len(self._output_rate._stamps),
            'stats': len(self.stats._results),
            'log_keys': len(self._log._last),
        }


def _object_parser(spec: str) -> Callable[[str], list] | None:
    """Return the parser the object_parser parameter names (scenes.parse.load_object_parser)."""
    from ros2_gmskip.scenes.parse import load_object_parser
    return load_object_parser(spec)


def format_value(value: Any) -> str:
    """Diagnostic KeyValue text: floats to 3 decimals, lists comma-joined, None as ''."""
    if value is None:
        return ''
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.3f}'
    if isinstance(value, (list, tuple)):
        return ','.join(format_value(v) for v in value)
    return str(value)


def token_skip_text(tokens: dict | None) -> str:
    """Return the backend's FastV / KV-removal settings in words ('none' when off)."""
    from ros2_gmskip.tokenskip.settings import TokenSkip
    try:
        return TokenSkip.from_dict(tokens).describe()
    except ValueError as err:
        return f'unreadable ({err})'
