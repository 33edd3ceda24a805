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
rosbag2 (MCAP and sqlite3) reading and writing through `rosbags`, with no ROS 2 install.

- `BagImageReader` reads the frames of one camera topic (sensor_msgs/Image or CompressedImage).
  A damaged bag — a recorder killed mid-write, a copy cut short, corrupt bytes — gives its frames
  up to the damage, then stops and says why in `.error` instead of raising. Where `rosbags`
  refuses a file (MCAP without footer / summary, sqlite3 "disk image is malformed") or stops in
  it, the storage is read on its own (`_Salvage`: MCAP record by record, sqlite3 row by row
  through a VFS that zero-fills missing pages), so a bag from a killed recorder still replays.
- `BagOutputWriter` writes any message type the typestore knows (replay outputs: String,
  DiagnosticArray, ...), adding connections as topics first appear.
- `make_bag` writes a bag of rendered test scenes on an Autoware camera topic.

Paths: a rosbag2 folder (with metadata.yaml), a .mcap / .db3 file inside one (its folder is read),
or a lone .mcap / .db3 file (read on its own; also a folder whose metadata.yaml was never written).
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
import errno
from io import BytesIO
import itertools
import json
import logging
import os
from pathlib import Path
import re
import sqlite3
import struct
from types import TracebackType
from typing import Any, Iterator

import numpy as np
from ros2_gmskip.errors import BagError, GmSkipError
from ros2_gmskip.folders import check_writable, written_in_place
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import decompress as _mcap_decompress
from rosbags.typesys import get_typestore, Stores
import yaml

log = logging.getLogger(__name__)

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STRING_TYPE = 'std_msgs/msg/String'

STORAGES = ('mcap', 'sqlite3')
DEFAULT_TOPIC = '/sensing/camera/camera0/image_rect_color'
DEFAULT_FRAME_ID = 'camera0/camera_optical_link'
# make_bag's scene ground truth: std_msgs/String JSON, one per frame, same stamp as the image.
GROUND_TRUTH_TOPIC = '/gmskip/ground_truth'
# Header stamp of make_bag's first frame: fixed, so the same arguments give the same bag.
DEFAULT_START_NS = 1_700_000_000_000_000_000

MAX_SKIP_REASONS = 20
# rosbag2 metadata version written: 8 is the oldest `rosbags` writes (Humble-era readers cope
# better with it than with 9's QoS format).
_BAG_VERSION = 8
# rosbag2 records the distribution of the recording machine; rosbags writes 'rosbags'
ROS_DISTRO = os.environ.get('ROS_DISTRO') or 'jazzy'
# what rosbag2 writes for an infinite deadline / lifespan / lease (RMW_DURATION_INFINITE)
_INFINITE = QosTime(sec=9223372036, nsec=854775807)
_STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}


def _one_line(err: BaseException) -> str:
    text = ' '.join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (GmSkipError, _Damage)) else f'{type(err).__name__}: {text}'


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (`.sec`, `.nanosec`) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_msg(stamp_ns: int, frame_id: str = '') -> Any:
    """Return a std_msgs/msg/Header of the typestore."""
    Time = TYPESTORE.types['builtin_interfaces/msg/Time']
    Header = TYPESTORE.types['std_msgs/msg/Header']
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


@dataclass
class BagFrame:
    """One deserialized message of the image topic."""

    topic: str
    msgtype: str
    timestamp_ns: int       # bag receive time; the capture time is msg.header.stamp
    msg: Any                # deserialized message (.header.stamp.sec/.nanosec, .header.frame_id)

    @property
    def compressed(self) -> bool:
        return self.msgtype == COMPRESSED_TYPE

    @property
    def stamp_ns(self) -> int:
        """Return the header stamp in nanoseconds."""
        return stamp_to_ns(self.msg.header.stamp)


# ---------------------------------------------------------------------------------------------
# locating the bag


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path.name)]


@dataclass
class _BagPaths:
    target: Path                    # what rosbags opens: the folder, or a lone storage file
    storage: str                    # 'mcap' | 'sqlite3' (or what metadata.yaml names)
    files: list[Path]               # storage files in recording order
    meta_topics: dict[str, str]     # topic -> msgtype from metadata.yaml ({} without one)


def _resolve(path: Path) -> _BagPaths:
    path = Path(path)
    if not path.exists():
        raise BagError(f'no such rosbag {str(path)!r}: give a rosbag2 folder or its .mcap / .db3 '
                       f'file')
    if path.is_file():
        if path.suffix not in _STORAGE_SUFFIXES:
            raise BagError(f'not a rosbag2 folder or file {str(path)!r}: expected a folder with '
                           f'metadata.yaml, or a .mcap / .db3 file')
        if (path.parent / 'metadata.yaml').is_file():
            return _resolve(path.parent)
        return _BagPaths(path, _STORAGE_SUFFIXES[path.suffix], [path], {})
    meta = path / 'metadata.yaml'
    if meta.is_file():
        try:
            info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
            storage = str(info['storage_identifier'])
            files = [path / Path(str(p)).name for p in info['relative_file_paths']]
            topics = {str(t['topic_metadata']['name']): str(t['topic_metadata']['type'])
                      for t in info.get('topics_with_message_count') or []}
        except Exception as err:
            raise BagError(f'rosbag2 metadata {str(meta)!r} is unreadable: '
                           f'{_one_line(err)}') from err
        return _BagPaths(path, storage, files, topics)
    files = sorted((p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES), key=_natural_key)
    if len(files) == 1:
        log.warning('%s has no metadata.yaml (recording not closed?): reading %s on its own',
                    path, files[0].name)
        return _BagPaths(files[0], _STORAGE_SUFFIXES[files[0].suffix], files, {})
    what = 'no' if not files else f'{len(files)}'
    raise BagError(f'not a rosbag2 folder {str(path)!r}: no metadata.yaml and {what} .mcap / .db3 '
                   f'files; point at one of them')


# ---------------------------------------------------------------------------------------------
# salvage: what is readable of storage files that rosbags refuses or fails on, in file order


class _Damage(Exception):
    """The file cannot be read past this point."""


_U16 = struct.Struct('<H')
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_MCAP_MAGIC = b'\x89MCAP0\r\n'
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_DATA_END = 2, 3, 4, 5, 6, 0x0F
_MESSAGE_HEAD = 22      # channel u16, sequence u32, log_time u64, publish_time u64
_VFS_IDS = itertools.count()


def _take(bio: Any, size: int) -> bytes:
    pos = bio.tell()
    data = bio.read(size)
    if len(data) != size:
        raise _Damage(f'record cut short at byte {pos}: {len(data)} of {size} bytes')
    return data


def _read_str(bio: BytesIO) -> str:
    return _take(bio, _U32.unpack(_take(bio, 4))[0]).decode()


def _record_head(bio: Any, end: int | None, where: str) -> tuple[int, int] | None:
    """
    (opcode, length) of the next record; None at the end of the data.

    `end`: the length of a chunk's records (None: the file, read to EOF); `where` names it.
    """
    pos = bio.tell()
    if end is not None and pos >= end:
        return None
    op = bio.read(1)
    if not op:
        if end is None:
            raise _Damage(f'{where} ends at byte {pos} without an MCAP footer')
        return None
    size = _U64.unpack(_take(bio, 8))[0]
    if op[0] in (_OP_FOOTER, _OP_DATA_END):
        return None
    if op[0] == 0 or op[0] > 0x10 or size > 1 << 34:
        raise _Damage(f'{where}: invalid record (opcode 0x{op[0]:02x}, length {size}) at '
                      f'byte {pos}')
    if end is not None and pos + 9 + size > end:
        raise _Damage(f'{where}: record at byte {pos} (opcode 0x{op[0]:02x}, length {size}) '
                      f'runs past the end ({end} bytes)')
    return op[0], size


def _inner_records(data: bytes, where: str) -> Iterator[tuple[int, bytes]]:
    bio = BytesIO(data)
    while (head := _record_head(bio, len(data), where)) is not None:
        yield head[0], _take(bio, head[1])


def _mcap_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """
    (opcode, body) of an MCAP file's data section, chunks opened; _Damage where it breaks.

    An uncompressed chunk cut short still gives the records before the cut.
    """
    with path.open('rb') as f:
        if f.read(8) != _MCAP_MAGIC:
            raise _Damage('not an MCAP file (bad magic)')
        while (head := _record_head(f, None, path.name)) is not None:
            op, size = head
            pos = f.tell() - 9
            body = f.read(size)
            if op != _OP_CHUNK:
                if len(body) != size:
                    raise _Damage(f'{path.name}: record at byte {pos} cut short: {len(body)} of '
                                  f'{size} bytes')
                yield op, body
                continue
            rec = BytesIO(body)
            _, _, raw_size, crc = struct.unpack('<QQQI', _take(rec, 28))
            compression = _read_str(rec)
            length = _U64.unpack(_take(rec, 8))[0]
            data = rec.read(length)
            where = f'{path.name}: chunk at byte {pos}'
            if len(data) != length:
                if not compression:                 # the records before the cut are whole
                    yield from _inner_records(data, f'{where}, cut short')
                raise _Damage(f'{where} cut short: {len(data)} of {length} bytes')
            try:
                data = _mcap_decompress(data, compression, raw_size, crc)
            except Exception as err:
                raise _Damage(f'{where}: {_one_line(err)}') from err
            yield from _inner_records(data, where)


def _padded_sqlite(path: Path) -> tuple[Any, Any]:
    """
    (apsw connection, its VFS) reading `path` as if zero-filled up to its header's page count.

    A cut .db3 then opens; its rows read in rowid order up to the first missing page.
    """
    import apsw

    with path.open('rb') as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b'SQLite format 3\x00'):
        raise _Damage('not an sqlite3 database (bad header)')
    page_size = struct.unpack('>H', head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    size = max(path.stat().st_size, page_size * struct.unpack('>I', head[28:32])[0])

    class File(apsw.VFSFile):
        """`path` opened read-only, reading zeros past its end up to `size`."""

        def __init__(self) -> None:            # no base init: read-only, immutable, no locks
            self._file = path.open('rb')

        def xDeviceCharacteristics(self) -> int:
            return 0

        def xSectorSize(self) -> int:
            return 0

        def xFileControl(self, op: int, ptr: int) -> bool:
            return False

        def xFileSize(self) -> int:
            return size

        def xRead(self, amount: int, offset: int) -> bytes:
            self._file.seek(offset)
            data = self._file.read(amount)
            if len(data) < amount and offset + amount <= size:
                data += bytes(amount - len(data))
            return data

        def xClose(self) -> None:
            self._file.close()

    class VFS(apsw.VFS):
        """A VFS whose every file is a `File`."""

        def __init__(self, name: str) -> None:
            super().__init__(name, '')

        def xOpen(self, name: Any, flags: Any) -> apsw.VFSFile:
            return File()

    name = f'gmskip-padded-{next(_VFS_IDS)}'
    vfs = VFS(name)
    try:
        conn = apsw.Connection(f'file:{path}?immutable=1', vfs=name,
                               flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    except Exception:
        vfs.unregister()
        raise
    return conn, vfs


class _Salvage:
    """
    Topics and messages of damaged storage files, read in file (recording) order.

    `topics` has the readable message count of each topic; topics the files no longer show are
    taken from metadata.yaml with count 0. `messages` raises _Damage at the first damage.
    """

    def __init__(self, storage: str, files: list[Path], meta_topics: dict[str, str],
                 scan: bool = True) -> None:
        self.storage = storage
        self.files = files
        self.error: str | None = None          # the first damage the scan met
        self.topics: dict[str, tuple[str, int]] = {}
        if not scan:
            return
        for path in files:
            try:
                if storage == 'mcap':
                    self._scan_mcap(path)
                else:
                    self._scan_sqlite(path)
            except Exception as err:
                self.error = _one_line(err) if isinstance(err, _Damage) else \
                    f'{path.name}: {_one_line(err)}'
                break
        for topic, msgtype in meta_topics.items():
            self.topics.setdefault(topic, (msgtype, 0))

    def _count(self, topic: str, msgtype: str, n: int = 0) -> None:
        old_type, count = self.topics.get(topic, (msgtype, 0))
        self.topics[topic] = (old_type if old_type == msgtype else '?', count + n)

    def _scan_mcap(self, path: Path) -> None:
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        for op, body in _mcap_records(path):
            if op == _OP_SCHEMA:
                rec = BytesIO(body)
                sid = _U16.unpack(_take(rec, 2))[0]
                schemas[sid] = _read_str(rec)
            elif op == _OP_CHANNEL:
                rec = BytesIO(body)
                cid, sid = struct.unpack('<HH', _take(rec, 4))
                channels[cid] = (_read_str(rec), schemas.get(sid, '?'))
                self._count(*channels[cid])
            elif op == _OP_MESSAGE and len(body) >= _MESSAGE_HEAD:
                if (cid := _U16.unpack_from(body)[0]) in channels:
                    self._count(*channels[cid], 1)

    def _scan_sqlite(self, path: Path) -> None:
        conn, vfs = _padded_sqlite(path)
        try:
            ids = {}
            for tid, name, msgtype in conn.execute('SELECT id, name, type FROM topics'):
                ids[tid] = (name, msgtype)
                self._count(name, msgtype)
            for (tid,) in conn.execute('SELECT topic_id FROM messages ORDER BY id'):
                if tid in ids:
                    self._count(*ids[tid], 1)
        finally:
            conn.close()
            vfs.unregister()

    def messages(self, topic: str, skip: int = 0) -> Iterator[tuple[int, bytes]]:
        """(bag timestamp ns, CDR bytes) of `topic` after the first `skip`; _Damage at damage."""
        for path in self.files:
            if self.storage == 'mcap':
                found = self._mcap_messages(path, topic)
            else:
                found = self._sqlite_messages(path, topic)
            try:
                for item in found:
                    if skip:
                        skip -= 1
                        continue
                    yield item
            except _Damage:
                raise
            except Exception as err:
                raise _Damage(f'{path.name}: {_one_line(err)}') from err

    @staticmethod
    def _mcap_messages(path: Path, topic: str) -> Iterator[tuple[int, bytes]]:
        wanted: set[int] = set()
        for op, body in _mcap_records(path):
            if op == _OP_CHANNEL:
                rec = BytesIO(body)
                cid = _U16.unpack(_take(rec, 2))[0]
                _take(rec, 2)
                if _read_str(rec) == topic:
                    wanted.add(cid)
            elif (op == _OP_MESSAGE and len(body) >= _MESSAGE_HEAD
                  and _U16.unpack_from(body)[0] in wanted):
                yield _U64.unpack_from(body, 6)[0], body[_MESSAGE_HEAD:]

    @staticmethod
    def _sqlite_messages(path: Path, topic: str) -> Iterator[tuple[int, bytes]]:
        conn, vfs = _padded_sqlite(path)
        try:
            yield from conn.execute(
                'SELECT messages.timestamp, messages.data FROM messages JOIN topics '
                'ON messages.topic_id = topics.id WHERE topics.name = ? ORDER BY messages.id',
                (topic,))
        finally:
            conn.close()
            vfs.unregister()


# ---------------------------------------------------------------------------------------------
# reading


class BagImageReader:
    """
    The frames of one image topic of a rosbag2; a context manager.

        with BagImageReader(Path('drive_bag')) as bag:
            for frame in bag.frames():
                rgb = image_to_rgb(frame.msg)
            if bag.error:
                ...   # the bag is damaged; the frames before the damage were given

    Damage never raises out of `frames()`: where rosbags refuses a file or stops in it, the
    storage is read record by record (MCAP) / row by row (sqlite3) up to the damage, and `error`
    says what happened.
    """

    def __init__(self, path: Path, topic: str | None = None) -> None:
        self.path = Path(path)
        self.error: str | None = None          # one line, set when the bag proved damaged
        self.skipped = 0                       # messages that failed to deserialize
        self.skip_reasons: list[str] = []      # the first MAX_SKIP_REASONS of their reasons
        self.salvaged = False                  # True: read record-wise past rosbags
        self._paths = _resolve(self.path)
        self.storage = self._paths.storage
        self._reader: Reader | None = None
        self._salvage: _Salvage | None = None
        self._damage: str | None = None        # why rosbags could not read the bag
        self._closed = False
        self._raw: Iterator[tuple[int, bytes]] | None = None   # the messages being read
        topics = self._open()
        try:
            self.topic, self.msgtype = self._pick(topics, topic)
        except BaseException:
            self.close()
            raise
        # messages on the topic per the bag index; when salvaged, those found before the damage
        self.message_count: int = topics[self.topic][1]

    # -- opening

    def _open(self) -> dict[str, tuple[str, int]]:
        """Open with rosbags, or salvage; topic -> (msgtype, message count) of every topic."""
        try:
            reader = Reader(self._paths.target)
            reader.open()
        except Exception as err:
            reason = _one_line(err)
            if self.storage not in STORAGES:
                raise BagError(f'cannot open rosbag {str(self.path)!r}: {reason}') from err
            log.warning('rosbags cannot open %s (%s); reading it %s', self.path, reason,
                        'record by record' if self.storage == 'mcap' else 'row by row')
            salvage = self._start_salvage(reason)
            if not salvage.topics:
                raise BagError(f'cannot open rosbag {str(self.path)!r}: {reason}'
                               + (f'; {salvage.error}' if salvage.error else '')) from err
            return dict(salvage.topics)
        self._reader = reader
        return {name: (info.msgtype or '?', info.msgcount)
                for name, info in reader.topics.items()}

    def _start_salvage(self, reason: str, scan: bool = True) -> _Salvage:
        files = [f for f in self._paths.files if f.exists()]
        self._salvage = _Salvage(self.storage, files, self._paths.meta_topics, scan=scan)
        self._damage = reason
        self.salvaged = True
        return self._salvage

    def _pick(self, topics: dict[str, tuple[str, int]], topic: str | None) -> tuple[str, str]:
        images = sorted(t for t, (msgtype, _) in topics.items() if msgtype in IMAGE_TYPES)
        listing = ', '.join(images) if images else 'none'
        if topic is None:
            if len(images) == 1:
                return images[0], topics[images[0]][0]
            if not images:
                others = ', '.join(f'{t} ({m})' for t, (m, _) in sorted(topics.items()))
                raise BagError(f'no sensor_msgs/msg/Image or CompressedImage topic in '
                               f'{str(self.path)!r}; its topics: {others or "none"}')
            raise BagError(f'{len(images)} image topics in {str(self.path)!r}: {listing}; '
                           'pick one with --topic')
        if topic not in topics:
            raise BagError(f'topic {topic!r} not in {str(self.path)!r}; its image topics: '
                           f'{listing}')
        if topics[topic][0] not in IMAGE_TYPES:
            raise BagError(f'topic {topic!r} in {str(self.path)!r} is {topics[topic][0]}, not an '
                           f'image; its image topics: {listing}')
        return topic, topics[topic][0]

    # -- reading

    def _rosbags_messages(self) -> Iterator[tuple[int, bytes]]:
        assert self._reader is not None
        conns = [c for c in self._reader.connections if c.topic == self.topic]
        for _, timestamp, data in self._reader.messages(connections=conns):
            yield timestamp, data

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < MAX_SKIP_REASONS:
            self.skip_reasons.append(reason)

    def frames(self) -> Iterator[BagFrame]:
        """Yield the topic's messages, in time order (in recording order where salvaged)."""
        if self._closed:
            raise BagError(f'rosbag {str(self.path)!r} is closed')
        self.error, self.skipped, self.skip_reasons = None, 0, []
        seen = 0                               # raw messages taken, deserialized or not
        if self._salvage is not None:
            raw = self._salvage.messages(self.topic)
        else:
            raw = self._rosbags_messages()
        while True:
            self._raw = raw
            try:
                timestamp, data = next(raw)
            except StopIteration:
                break
            except Exception as err:           # damage
                reason = _one_line(err)
                if self._salvage is None:      # rosbags stopped: read on record-wise
                    log.warning('rosbag %s: rosbags stopped after %d messages of %s (%s); '
                                'reading on record by record', self.path, seen, self.topic,
                                reason)
                    raw = self._start_salvage(reason, scan=False).messages(self.topic, skip=seen)
                    continue
                self.error = reason
                log.warning('rosbag %s: stopped after %d messages of %s: %s',
                            self.path, seen, self.topic, self.error)
                return
            seen += 1
            try:
                msg = TYPESTORE.deserialize_cdr(data, self.msgtype)
            except Exception as err:
                self._skip(f'message {seen} at {timestamp} ns: {_one_line(err)}')
                continue
            yield BagFrame(self.topic, self.msgtype, int(timestamp), msg)
        if self._damage:
            self.error = self._damage
        elif self.message_count and seen < self.message_count:
            self.error = (f'bag ended after {seen} of {self.message_count} messages on '
                          f'{self.topic}: the rest are unreadable')
        if self.error:
            log.warning('rosbag %s: %s', self.path, self.error)

    def close(self) -> None:
        self._closed = True
        raw, self._raw = self._raw, None
        if raw is not None and hasattr(raw, 'close'):
            raw.close()                        # a salvage read frees its file / VFS
        reader, self._reader = self._reader, None
        if reader is not None and reader.is_open:
            reader.close()

    def __enter__(self) -> BagImageReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# writing


def offered_qos(profile: str = 'default') -> Qos:
    """
    Return the QoS a publisher offers, as rosbag2 records it per topic.

    'sensor': the camera's sensor-data QoS (best effort, keep last 5); 'default': what the node
    publishes with (reliable, keep last 10). Both volatile.
    """
    sensor = profile == 'sensor'
    return Qos(history=QosHistory.KEEP_LAST, depth=5 if sensor else 10,
               reliability=QosReliability.BEST_EFFORT if sensor else QosReliability.RELIABLE,
               durability=QosDurability.VOLATILE, deadline=_INFINITE, lifespan=_INFINITE,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
               avoid_ros_namespace_conventions=False)


def _with_distro(metadata: str) -> str:
    return re.sub(r'(?m)^(\s*ros_distro:) rosbags$', rf'\1 {ROS_DISTRO}', metadata)


class _Writer(Writer):
    """rosbags' Writer, with rosbag2's `ros_distro` in metadata.yaml and the storage's copy."""

    def close(self) -> None:
        storage = self.storage
        if storage is not None:
            close = storage.close
            storage.close = lambda version, metadata: close(version, _with_distro(metadata))
        super().close()
        self.metapath.write_text(_with_distro(self.metapath.read_text('utf-8')), 'utf-8')


class BagOutputWriter:
    """
    Writes typestore messages to a new rosbag2; a context manager.

    The bag is closed properly (metadata.yaml and MCAP summary written) even when the `with`
    body raises, so what was written stays readable. `make_bag` and `replay_bag` write through
    `folders.written_in_place`, so their bags appear complete or not at all.
    """

    def __init__(self, path: Path, storage: str = 'mcap', typestore: Any = None) -> None:
        self.path = Path(path)
        self.typestore = TYPESTORE if typestore is None else typestore   # e.g. + Float64Stamped
        if storage not in STORAGES:
            raise BagError(f'unknown rosbag storage {storage!r}: expected one of '
                           f'{", ".join(STORAGES)}')
        if self.path.exists():
            raise BagError(f'output {str(self.path)!r} exists: choose another path or remove it')
        self.storage = storage
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer: Writer | None = _Writer(self.path, version=_BAG_VERSION,
                                              storage_plugin=plugin)
        try:
            self._writer.open()
        except Exception as err:
            self._writer = None
            raise BagError(f'cannot create rosbag {str(self.path)!r}: {_one_line(err)}') from err
        self._connections: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}       # topic -> messages written

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any,
              qos: str = 'default') -> None:
        """
        Serialize `msg` (a message of `msgtype` in this writer's typestore) and append it.

        `qos`: the profile its publisher offers ('sensor' or 'default', see `offered_qos`),
        recorded with the topic when it first appears.
        """
        if self._writer is None:
            raise BagError(f'rosbag {str(self.path)!r} is closed')
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            if msgtype not in self.typestore.types:
                raise BagError(f'message type {msgtype!r} is unknown to the typestore: '
                               f'cannot write topic {topic!r}')
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                               offered_qos_profiles=[offered_qos(qos)])
            self._connections[key] = conn
        try:
            data = self.typestore.serialize_cdr(msg, msgtype)
        except Exception as err:
            raise BagError(f'cannot serialize a {type(msg).__name__} as {msgtype} for topic '
                           f'{topic!r}: {_one_line(err)}') from err
        with self._storage_errors():
            self._writer.write(conn, int(timestamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        """Write the index and metadata.yaml; if that fails (a full disk), release the file."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                with self._storage_errors():
                    writer.close()
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.abort()           # close the file without its summary
                raise

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Raise sqlite3's 'database or disk is full' as the OSError (ENOSPC) MCAP would give."""
        try:
            yield
        except sqlite3.OperationalError as err:
            if 'full' in str(err):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from err
            raise BagError(f'cannot write rosbag {str(self.path)!r}: sqlite3: {err}') from err

    def __enter__(self) -> BagOutputWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# test bags


def make_bag(out: Path, n: int = 100, fps: float = 10.0, compressed: bool = False,
             storage: str = 'mcap', topic: str = DEFAULT_TOPIC, split: str = 'test',
             frame_id: str = DEFAULT_FRAME_ID, progress: bool = True, width: int = 640,
             height: int = 480, start_ns: int = DEFAULT_START_NS,
             truth_topic: str | None = GROUND_TRUTH_TOPIC) -> dict:
    """
    Write `n` rendered scenes of `split` as a camera topic at `fps`; returns a summary.

    Image: sensor_msgs/Image rgb8 on `topic`. Compressed: sensor_msgs/CompressedImage jpeg on
    `<topic>/compressed`. Header stamp (and bag time) of frame i = start_ns + i / fps. With
    `truth_topic`, each frame's scene ground truth (std_msgs/String JSON: stamp_ns, frame_id,
    scene) is written at the same time.
    """
    from ros2_gmskip.ros.image_convert import rgb_to_image_fields, rgb_to_jpeg
    from ros2_gmskip.scenes import render_scene, split_seeds
    from tqdm import tqdm

    if n <= 0 or not fps > 0 or width <= 0 or height <= 0:
        raise BagError(f'make_bag needs n, fps, width, height > 0, got n={n}, fps={fps}, '
                       f'width={width}, height={height}')
    if compressed and not topic.endswith('/compressed'):
        topic = topic.rstrip('/') + '/compressed'
    try:
        seeds = split_seeds(split, n)
    except ValueError as err:
        raise BagError(str(err)) from err
    Image = TYPESTORE.types[IMAGE_TYPE]
    CompressedImage = TYPESTORE.types[COMPRESSED_TYPE]
    String = TYPESTORE.types[STRING_TYPE]
    msgtype = COMPRESSED_TYPE if compressed else IMAGE_TYPE
    try:                                       # the renderer's limits, before the bag exists
        first = render_scene(seeds[0], width=width, height=height)
    except ValueError as err:
        raise BagError(f'cannot render {width}x{height} scenes: {err}') from err
    out = Path(out)
    if out.exists():
        raise BagError(f'output {str(out)!r} exists: choose another path or remove it')
    check_writable(out, 'output bag')
    with written_in_place(out, 'output bag', create=False) as tmp, \
            BagOutputWriter(tmp, storage) as bag:
        for i, seed in enumerate(tqdm(seeds, desc=f'make-bag {Path(out).name}', unit='frame',
                                      disable=not progress)):
            rgb, scene = first if i == 0 else render_scene(seed, width=width, height=height)
            stamp_ns = start_ns + round(i * 1e9 / fps)
            header = header_msg(stamp_ns, frame_id)
            if compressed:
                msg = CompressedImage(header=header, format='jpeg',
                                      data=np.frombuffer(rgb_to_jpeg(rgb), np.uint8))
            else:
                fields = rgb_to_image_fields(rgb, 'rgb8')
                fields['data'] = np.frombuffer(fields['data'], np.uint8)
                msg = Image(header=header, **fields)
            bag.write(topic, msgtype, stamp_ns, msg, qos='sensor')
            if truth_topic:
                truth = {'stamp_ns': stamp_ns, 'frame_id': frame_id, 'scene': scene.to_dict()}
                bag.write(truth_topic, STRING_TYPE, stamp_ns, String(data=json.dumps(truth)))
    return {'path': str(out), 'topic': topic, 'n': n, 'fps': fps, 'storage': storage,
            'compressed': compressed, 'msgtype': msgtype, 'width': width, 'height': height,
            'truth_topic': truth_topic}
