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
Replay a rosbag2 camera topic through the describer pipeline; record what the node would publish.

    summary = replay_bag(Path('drive_bag'), Path('drive_described'), backend, rate='max')

The frames go through the same `DescriberCore` as the live `gmskip_describer` node (conversion,
newest-frame hand-off to one worker thread, counters, diagnostics); only time is different:

- `rate='max'`: every frame is described, in order: a frame is handed to the core with
  `on_image` and the next one only once the worker is idle again, so nothing is dropped.
- `rate='realtime'`: the calling thread is the camera. It sleeps the bag's gaps between frames
  and hands each frame over with `on_image` while the core's worker runs inference, so frames
  that arrive while the model is busy are dropped and counted exactly as in the live node.

Replay clock (`ReplayClock`): bag time, running at real speed from an anchor. In realtime mode it
is anchored once (first frame's bag time = the instant it is fed); in max mode it is re-anchored at
each frame's bag time when the frame is fed, as if every frame found the pipeline idle. The core
gets it as `clock` and `wall_clock`, so processing time is real elapsed time, and pipeline latency
(replay clock at output - input header stamp) is the time from capture to output in bag time
(including the wait for the worker in realtime mode). Input / output rates are per bag second.

Output bag (what the node publishes, for the node `gmskip_describer`):
  /gmskip_describer/output/description       std_msgs/msg/String      the text
  /gmskip_describer/output/scene             std_msgs/msg/String      JSON (SceneOutput.scene_dict)
  /diagnostics                               diagnostic_msgs/msg/DiagnosticArray, one per
                                             `diagnostics_period_s` of bag time, and a last one
  /gmskip_describer/debug/processing_time_ms, pipeline_latency_ms, cyclic_time_ms
                                             autoware_internal_debug_msgs/msg/Float64Stamped
  /gmskip/ground_truth                       copied from the input when it has one
Outputs are written at replay-clock time of publication (input bag time + wait + processing), so
they sort after their input; description, scene and debug messages carry the input header stamp
(in the scene JSON / Float64Stamped.stamp). The input images are not copied (the bag stays small).

Float64Stamped is not in rosbags' ROS 2 Humble typestore: it is registered
(`builtin_interfaces/Time stamp`, `float64 data`, the definition of autoware_internal_debug_msgs)
in this module's own copy, `REPLAY_TYPESTORE`, so the shared `bag.TYPESTORE` is left as it is.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
import sys
import threading
import time
from typing import Any, Callable, Iterator

from ros2_gmskip.errors import BagError, GmSkipError
from ros2_gmskip.folders import check_writable, written_in_place
from ros2_gmskip.ros.bag import BagImageReader, BagOutputWriter, GROUND_TRUTH_TOPIC, STRING_TYPE
from ros2_gmskip.ros.messages import (
    absolute_topic,
    DEBUG_TOPICS,
    DESCRIPTION,
    DIAGNOSTICS,
    diagnostics_message,
    FLOAT64_STAMPED,
    SCENE,
    scene_messages,
)
from ros2_gmskip.ros.params import DescriberParams
from ros2_gmskip.ros.pipeline import default_convert, DescriberCore, SceneOutput
from ros2_gmskip.runtime.stats import percentiles, STAGES
from rosbags.typesys import get_types_from_msg, get_typestore, Stores

log = logging.getLogger(__name__)

RATES = ('max', 'realtime')
DESCRIPTION_TOPIC = absolute_topic(DESCRIPTION)
SCENE_TOPIC = absolute_topic(SCENE)
DIAGNOSTICS_TOPIC = DIAGNOSTICS
DEBUG_TOPIC = {name: absolute_topic(f'~/debug/{name}') for name in DEBUG_TOPICS}
# Stages reported in the summary: the backend's breakdown, then the pipeline's own timings.
SUMMARY_STAGES = STAGES + ('processing_time_ms', 'pipeline_latency_ms')
# At most this many /diagnostics ticks for one gap between frames (a paused recording would
# otherwise give one per second of pause); the schedule then resumes after the gap.
MAX_TICKS_PER_GAP = 60

FLOAT64_STAMPED_MSG = 'builtin_interfaces/Time stamp\nfloat64 data\n'


def _replay_typestore() -> Any:
    store = get_typestore(Stores.ROS2_HUMBLE)        # a fresh copy, not bag.TYPESTORE
    store.register(get_types_from_msg(FLOAT64_STAMPED_MSG, FLOAT64_STAMPED))
    return store


REPLAY_TYPESTORE = _replay_typestore()


class ReplayClock:
    """Bag time in seconds / nanoseconds, running at real speed from the last `anchor`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bag_ns = 0
        self._real = time.perf_counter()

    def anchor(self, bag_ns: int, real: float | None = None) -> None:
        """From now (or the perf_counter instant `real`) on, bag time `bag_ns` runs on."""
        with self._lock:
            self._bag_ns = int(bag_ns)
            self._real = time.perf_counter() if real is None else real

    def now_ns(self) -> int:
        with self._lock:
            return self._bag_ns + round((time.perf_counter() - self._real) * 1e9)

    def now_s(self) -> float:
        return self.now_ns() / 1e9


def _time_msg(stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return REPLAY_TYPESTORE.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def bag_message(msgtype: str, fields: dict[str, Any]) -> Any:
    """Return a rosbags message of `msgtype` from plain values (messages.py's fields)."""
    from rosbags.interfaces import Nodetype

    _, defs = REPLAY_TYPESTORE.fielddefs[msgtype]
    values = {}
    for name, (kind, detail) in defs:
        value = fields[name]
        if kind == Nodetype.NAME:
            value = bag_message(detail, value)
        elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
            value = [bag_message(detail[0][1], v) for v in value]
        values[name] = value
    return REPLAY_TYPESTORE.types[msgtype](**values)


def read_string_topic(path: Path, topic: str) -> tuple[list[tuple[int, str]], str | None]:
    """
    [(bag time ns, data)] of a std_msgs/String topic, up to any damage; and the damage (or None).

    A topic the bag does not have gives ([], None).
    """
    # bag.py's path resolution and salvage reader (no public API for non-image topics yet)
    from ros2_gmskip.ros.bag import _resolve, _Salvage
    from rosbags.rosbag2 import Reader

    paths = _resolve(Path(path))
    out: list[tuple[int, str]] = []
    if paths.meta_topics and topic not in paths.meta_topics:
        return out, None                       # metadata.yaml says: not in this bag
    try:
        with Reader(paths.target) as reader:
            conns = [c for c in reader.connections if c.topic == topic]
            if not conns:                      # (no connections would mean: all topics)
                return out, None
            for conn, timestamp, raw in reader.messages(connections=conns):
                msg = REPLAY_TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                out.append((int(timestamp), msg.data))
        return out, None
    except Exception as err:                   # damaged: read on record by record
        reason = ' '.join(str(err).split()) or type(err).__name__
    if paths.storage not in ('mcap', 'sqlite3'):
        return out, reason
    salvage = _Salvage(paths.storage, [f for f in paths.files if f.exists()], {}, scan=False)
    messages = salvage.messages(topic, skip=len(out))
    try:
        for timestamp, raw in messages:
            try:
                out.append((int(timestamp),
                            REPLAY_TYPESTORE.deserialize_cdr(raw, STRING_TYPE).data))
            except Exception:                  # one bad message: skip it
                continue
    except Exception as err:
        reason = ' '.join(str(err).split()) or type(err).__name__
    finally:
        messages.close()
    return out, reason


def read_output_bag(path: Path) -> list[tuple[str, int, Any]]:
    """[(topic, bag time ns, message)] of a replay output bag, in time order (tests, demo)."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return [(c.topic, int(t), REPLAY_TYPESTORE.deserialize_cdr(raw, c.msgtype))
                for c, t, raw in reader.messages()]


class _Ticks:
    """The /diagnostics schedule: every `period_ns` of bag time from the first frame on."""

    def __init__(self, period_s: float) -> None:
        self.period_ns = max(1, round(period_s * 1e9))
        self.next_ns: int | None = None
        self.last_ns: int | None = None        # stamp of the last tick given

    def due(self, bag_ns: int) -> list[int]:
        """Return the ticks at or before `bag_ns` not given yet (at most MAX_TICKS_PER_GAP)."""
        if self.next_ns is None:
            self.next_ns = bag_ns + self.period_ns
            return []
        ticks = []
        while self.next_ns <= bag_ns and len(ticks) < MAX_TICKS_PER_GAP:
            ticks.append(self.next_ns)
            self.next_ns += self.period_ns
        if self.next_ns <= bag_ns:             # a long gap: resume the schedule after it
            skipped = (bag_ns - self.next_ns) // self.period_ns + 1
            self.next_ns += skipped * self.period_ns
        if ticks:
            self.last_ns = ticks[-1]
        return ticks


class _Recorder:
    """
    Records what the node would publish into the output bag; collects per-frame timings.

    `publish` (worker thread) only builds the messages and queues them; `flush`, `diagnostics`
    and `truth_until` (replay thread) write.
    """

    def __init__(self, bag: BagOutputWriter, clock: ReplayClock,
                 truth: list[tuple[int, str]]) -> None:
        self.bag = bag
        self.clock = clock
        self.truth = sorted(truth)
        self._truth_next = 0
        self._cond = threading.Condition()
        self.published = 0                     # publish calls finished (failed or not)
        self._queue: list[tuple[str, str, int, Any]] = []   # (topic, msgtype, time ns, msg)
        self.timings: dict[str, list[float]] = {stage: [] for stage in SUMMARY_STAGES}
        self.tokens = 0
        self.rung_frames: dict[int, int] = {}  # plan-ladder rung -> frames described on it
        self.String = REPLAY_TYPESTORE.types[STRING_TYPE]

    # -- worker thread

    def publish(self, out: SceneOutput) -> None:
        """Write one output (DescriberCore's publish callback): text, scene JSON, debug timings."""
        try:
            write_ns = self.clock.now_ns()
            # debug values carry the input header stamp (the node stamps them with its clock)
            msgs = [(absolute_topic(topic), msgtype, write_ns, bag_message(msgtype, fields))
                    for topic, msgtype, fields in scene_messages(
                        out, (out.stamp_sec, out.stamp_nanosec))]
            with self._cond:
                self._queue.extend(msgs)
                for stage in STAGES:
                    self.timings[stage].append(float(out.latency.get(stage, math.nan)))
                self.timings['processing_time_ms'].append(out.processing_time_ms)
                if math.isfinite(out.pipeline_latency_ms):
                    self.timings['pipeline_latency_ms'].append(out.pipeline_latency_ms)
                self.tokens += int(out.tokens)
                if out.rung is not None:
                    index = int(out.rung['index'])
                    self.rung_frames[index] = self.rung_frames.get(index, 0) + 1
        finally:
            with self._cond:
                self.published += 1
                self._cond.notify_all()

    # -- replay thread

    def flush(self) -> None:
        """Write the queued outputs."""
        with self._cond:
            queue, self._queue = self._queue, []
        for item in queue:
            self.bag.write(*item)

    def wait_idle(self, core: DescriberCore) -> None:
        """Until the core has nothing waiting or in flight and its last publish has returned."""
        with self._cond:
            while True:
                counts = core.counts()
                if counts['pending'] == 0 and self.published >= counts['described']:
                    return
                self._cond.wait(0.002)        # rejected / failed frames do not publish: poll

    def diagnostics(self, core: DescriberCore, stamp_ns: int) -> None:
        """Write a DiagnosticArray of the core's diagnostics, stamped and written at `stamp_ns`."""
        topic, msgtype, fields = diagnostics_message(core.diagnostics(),
                                                     divmod(int(stamp_ns), 1_000_000_000))
        self.bag.write(topic, msgtype, stamp_ns, bag_message(msgtype, fields))

    def truth_until(self, bag_ns: int | None) -> None:
        """Copy the ground truth messages up to `bag_ns` (None: all that are left)."""
        while self._truth_next < len(self.truth) and \
                (bag_ns is None or self.truth[self._truth_next][0] <= bag_ns):
            timestamp, data = self.truth[self._truth_next]
            self.bag.write(GROUND_TRUTH_TOPIC, STRING_TYPE, timestamp, self.String(data=data))
            self._truth_next += 1


def _sleep_until(real: float) -> None:
    delay = real - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _feed_max(frames: Iterator[Any], core: DescriberCore, rec: _Recorder, clock: ReplayClock,
              ticks: _Ticks, bar: Any) -> int:
    """Every frame, one at a time: feed, wait until described (or rejected / failed)."""
    n = 0
    for frame in frames:
        for tick in ticks.due(frame.timestamp_ns):
            clock.anchor(tick)
            rec.diagnostics(core, tick)
        rec.truth_until(frame.timestamp_ns)
        clock.anchor(frame.timestamp_ns)
        core.on_image(frame.msg, frame.compressed)
        rec.wait_idle(core)
        rec.flush()
        n += 1
        bar.update(1)
    return n


def _feed_realtime(frames: Iterator[Any], core: DescriberCore, rec: _Recorder,
                   clock: ReplayClock, ticks: _Ticks) -> int:
    """Frames at the pace of their bag times; the worker takes the newest one (drops counted)."""
    n = 0
    bag0_ns, real0 = 0, 0.0                   # first frame's bag time, perf_counter then
    for frame in frames:
        if n == 0:
            bag0_ns, real0 = frame.timestamp_ns, time.perf_counter()
            clock.anchor(bag0_ns, real0)
        for tick in ticks.due(frame.timestamp_ns):
            _sleep_until(real0 + (tick - bag0_ns) / 1e9)
            rec.diagnostics(core, tick)
        _sleep_until(real0 + (frame.timestamp_ns - bag0_ns) / 1e9)
        rec.flush()
        rec.truth_until(frame.timestamp_ns)
        core.on_image(frame.msg, frame.compressed)
        n += 1
    return n


def replay_bag(in_bag: Path, out_bag: Path, backend: Any, params: DescriberParams | None = None,
               rate: str = 'max', topic: str | None = None, storage: str = 'mcap',
               progress: bool = True,
               convert: Callable[[Any, bool], Any] = default_convert) -> dict[str, Any]:
    """
    Describe the frames of `in_bag`'s image topic, write the outputs to `out_bag`; the summary.

    `backend`: a Backend, or a callable returning one, called once the input bag has opened
    (a bad input path then fails before a model loads, and before `out_bag` is created).
    `params`: prompt, max_new_tokens, diagnostics_period_s, warning thresholds (default: the
    node's config/gmskip.param.yaml). A damaged input is replayed up to the damage and the summary
    says why in 'bag_error'; messages that cannot be converted are 'rejected', never raised.
    `out_bag` appears complete or not at all (OutputError on a write error, nothing left).
    """
    from tqdm import tqdm

    if rate not in RATES:
        raise GmSkipError(f'unknown replay rate {rate!r}: expected one of {", ".join(RATES)}')
    in_bag, out_bag = Path(in_bag), Path(out_bag)
    if out_bag.exists():
        raise BagError(f'output {str(out_bag)!r} exists: choose another path or remove it')
    check_writable(out_bag, 'output bag')
    if params is None:
        from ros2_gmskip.ros.params import load_params
        params = load_params()
    if convert is default_convert:             # cv2 now, not inside the first frame's timing
        import ros2_gmskip.ros.image_convert  # noqa: F401
    truth, truth_error = read_string_topic(in_bag, GROUND_TRUTH_TOPIC)
    with BagImageReader(in_bag, topic) as reader:
        if callable(backend) and not hasattr(backend, 'describe'):
            backend = backend()
        clock = ReplayClock()
        ticks = _Ticks(params.diagnostics_period_s)
        # One thread only writes it: sqlite3 refuses writes from another thread than the one that
        # opened it, so the worker's outputs are queued and written by the replay thread.
        # Written beside out_bag and renamed at the end: a full disk, a refused prompt or Ctrl-C
        # leaves no partial bag (folders.written_in_place).
        with written_in_place(out_bag, 'output bag', create=False) as tmp_bag, \
                BagOutputWriter(tmp_bag, storage, typestore=REPLAY_TYPESTORE) as bag:
            rec = _Recorder(bag, clock, truth)
            core = DescriberCore(backend, params, publish=rec.publish, clock=clock.now_s,
                                 wall_clock=clock.now_s, convert=convert)
            t0 = time.perf_counter()
            first_ns: int | None = None
            last_ns: int | None = None

            def frames() -> Iterator[Any]:
                nonlocal first_ns, last_ns
                for frame in reader.frames():
                    first_ns = frame.timestamp_ns if first_ns is None else first_ns
                    last_ns = frame.timestamp_ns
                    yield frame

            core.start()
            try:
                if rate == 'max':
                    with tqdm(total=reader.message_count or None, unit='frame', file=sys.stderr,
                              desc=f'replay {in_bag.name}', disable=not progress) as bar:
                        n = _feed_max(frames(), core, rec, clock, ticks, bar)
                else:
                    n = _feed_realtime(frames(), core, rec, clock, ticks)
                rec.wait_idle(core)
                rec.flush()
                end_ns = clock.now_ns()
                if first_ns is not None and (ticks.last_ns is None or end_ns > ticks.last_ns):
                    rec.diagnostics(core, end_ns)    # the final counts
                rec.truth_until(None)
            finally:
                core.stop()
            wall_s = time.perf_counter() - t0
            counts = core.counts()
            outputs = dict(bag.counts)
    return _summary(in_bag, out_bag, reader, backend, core, rec, counts, outputs, rate, storage,
                    n, wall_s, first_ns, last_ns, truth_error if truth else None)


def _clean(x: Any) -> Any:
    """Floats rounded to 3 decimals, NaN / inf as None: strict JSON."""
    if isinstance(x, float):
        return round(x, 3) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _summary(in_bag: Path, out_bag: Path, reader: BagImageReader, backend: Any,
             core: DescriberCore, rec: _Recorder, counts: dict[str, int],
             outputs: dict[str, int], rate: str, storage: str, frames: int, wall_s: float,
             first_ns: int | None, last_ns: int | None,
             truth_error: str | None) -> dict[str, Any]:
    info = backend.info
    total_s = sum(v for v in rec.timings['total_ms'] if math.isfinite(v)) / 1e3
    bag_s = (last_ns - first_ns) / 1e9 if first_ns is not None and last_ns is not None else 0.0
    return _clean({
        'in_bag': str(in_bag),
        'out_bag': str(out_bag),
        'topic': reader.topic,
        'msgtype': reader.msgtype,
        'in_storage': reader.storage,
        'out_storage': storage,
        'rate': rate,
        'frames': frames,
        'received': counts['received'],
        'described': counts['described'],
        'dropped': counts['dropped'],
        'rejected': counts['rejected'],
        'errors': counts['errors'],
        'publish_errors': core.publish_errors,
        'skipped': reader.skipped,              # messages that did not deserialize
        'skip_reasons': list(reader.skip_reasons[:5]),
        'bag_error': reader.error,
        'ground_truth_error': truth_error,
        'last_error': core.last_error or None,
        'latency': {stage: percentiles(rec.timings[stage]) for stage in SUMMARY_STAGES},
        'tokens': rec.tokens,
        'tokens_per_s': rec.tokens / total_s if total_s > 0 else 0.0,
        'backend': getattr(backend, 'name', '?'),
        'model_id': info.model_id,
        'plan_id': info.plan_id,
        'engine_id': info.engine_id,
        'blocks_removed': list(info.blocks_removed),
        'token_skip': info.tokens.to_dict(),
        'latency_budget_ms': float(getattr(core.params, 'latency_budget_ms', 0.0)),
        'rung_frames': {str(k): v for k, v in sorted(rec.rung_frames.items())},
        'rung_switches': core.rung_values()['rung_switches'],
        'outputs': outputs,
        'debug_msgtype': FLOAT64_STAMPED,
        'bag_s': bag_s,
        'wall_s': wall_s,
    })
