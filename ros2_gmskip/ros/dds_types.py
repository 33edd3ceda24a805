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
ROS 2 message types as Cyclone DDS IDL structs, as rmw_cyclonedds_cpp puts them on the wire.

rmw_cyclonedds_cpp names a ROS type `pkg::msg::dds_::Type_` and serializes it as plain (XCDR1) CDR,
fields in declaration order, field names unchanged (names never reach the wire: CDR is positional,
and rmw_cyclonedds sends no XTypes type information, so endpoints match on the type name). ROS
`uint8[]` is `sequence<uint8>`; ROS `byte` is `octet`.

Images are big (a 1920x1080 rgb8 frame is 6 MB), and the generic Python CDR machine turns a
`sequence<uint8>` into a list of ints: ~45 ms to serialize and ~30 ms to get a numpy array back for
640x480. `Image` and `CompressedImage` therefore override `serialize` / `deserialize` with a path
that copies the trailing `data` bytes in one go and produces the same bytes as the generic machine
(a test checks this, and checks both against rosbags' ROS 2 CDR serializer). `data` is `bytes`
after deserialization and may be bytes / bytearray / memoryview / numpy array / list on publish.
"""

# no `from __future__ import annotations`: cyclonedds resolves string annotations such as
# 'types.uint32' against the wrong `types` module
import copy
from dataclasses import dataclass, field
import struct
import typing

from cyclonedds.idl import IdlStruct, types


@dataclass
class Time(IdlStruct, typename='builtin_interfaces::msg::dds_::Time_'):
    sec: types.int32 = 0
    nanosec: types.uint32 = 0


@dataclass
class Header(IdlStruct, typename='std_msgs::msg::dds_::Header_'):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ''


# ----------------------------------------------------------------------------------------------
# fast path for structs ending in `sequence<uint8> data`

_PRIMITIVES = {  # cyclonedds annotation name -> (struct code, size)
    'int8': ('b', 1), 'uint8': ('B', 1), 'byte': ('B', 1), 'int16': ('h', 2), 'uint16': ('H', 2),
    'int32': ('i', 4), 'uint32': ('I', 4), 'int64': ('q', 8), 'uint64': ('Q', 8),
    'float32': ('f', 4), 'float64': ('d', 8),
}


class _CdrReader:
    """Reads plain CDR (XCDR1, or XCDR2 for final types) after the 4-byte encapsulation header."""

    def __init__(self, data: typing.Union[bytes, memoryview]) -> None:
        self.buf = memoryview(data)
        if len(self.buf) < 4:
            raise ValueError(f'CDR sample of {len(self.buf)} bytes has no encapsulation header')
        kind = self.buf[1]
        self.endian = '<' if kind & 1 else '>'
        self.max_align = 4 if kind > 3 else 8     # XCDR2 aligns 8-byte types to 4
        self.pos = 4

    def align(self, size: int) -> None:
        size = min(size, self.max_align)
        offset = (self.pos - 4) % size
        if offset:
            self.pos += size - offset

    def primitive(self, code: str, size: int):
        self.align(size)
        (value,) = struct.unpack_from(self.endian + code, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.primitive('I', 4)               # length includes the trailing NUL
        text = bytes(self.buf[self.pos:self.pos + max(n - 1, 0)]).decode('utf-8')
        self.pos += n
        return text

    def octets(self) -> bytes:
        n = self.primitive('I', 4)
        if self.pos + n > len(self.buf):
            raise ValueError(f'sequence of {n} bytes overruns the {len(self.buf)}-byte sample')
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def read(self, cls: type) -> typing.Any:
        """Read a struct of primitives, strings, nested structs and a trailing uint8 sequence."""
        values = {}
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            if name.startswith('_') or typing.get_origin(hint) is typing.ClassVar:
                continue
            if hint is str:
                values[name] = self.string()
            elif isinstance(hint, type) and issubclass(hint, IdlStruct):
                values[name] = self.read(hint)
            elif hint is float:
                values[name] = self.primitive('d', 8)
            elif typing.get_origin(hint) is typing.Annotated:
                meta = typing.get_args(hint)[1]
                if isinstance(meta, str) and meta in _PRIMITIVES:
                    values[name] = self.primitive(*_PRIMITIVES[meta])
                elif (isinstance(meta, types.sequence)
                      and meta.subtype in (types.uint8, types.byte)):
                    values[name] = self.octets()
                else:
                    raise TypeError(f'{cls.__name__}.{name}: no fast path for {meta}')
            else:
                raise TypeError(f'{cls.__name__}.{name}: no fast path for {hint}')
        return cls(**values)


def _as_bytes(data) -> typing.Union[bytes, bytearray, memoryview]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if hasattr(data, 'tobytes'):               # numpy array, array.array
        return data.tobytes()
    return bytes(data)                         # list of ints


def _serialize_bytes_tail(self, buffer=None, endianness=None, use_version_2=None) -> bytes:
    """`IdlStruct.serialize` for structs whose last field is `data: sequence[uint8]`."""
    data = _as_bytes(self.data)
    stub = copy.copy(self)
    stub.data = []
    # the generic machine writes everything up to the empty sequence's 4-byte count; the count
    # is last and aligned, so swapping it for (count + bytes) gives exactly the generic machine's
    # bytes
    head = IdlStruct.serialize(stub, buffer=buffer, endianness=endianness,
                               use_version_2=use_version_2)
    endian = '<' if head[1] & 1 else '>'
    return b''.join((head[:-4], struct.pack(endian + 'I', len(data)), data))


def _deserialize_bytes_tail(cls, data, has_header: bool = True, use_version_2=None):
    """`IdlStruct.deserialize` for structs whose last field is `data: sequence[uint8]`."""
    if not has_header:
        return cls.__idl__.deserialize(data, has_header=False, use_version_2=use_version_2)
    return _CdrReader(data).read(cls)


# The two fast methods are set as class attributes rather than inherited from a mixin: the XTypes
# builder would turn a mixin base into struct inheritance and change the type.

@dataclass
class Image(IdlStruct, typename='sensor_msgs::msg::dds_::Image_'):
    header: Header = field(default_factory=Header)
    height: types.uint32 = 0
    width: types.uint32 = 0
    encoding: str = ''
    is_bigendian: types.uint8 = 0
    step: types.uint32 = 0
    data: types.sequence[types.uint8] = field(default_factory=list)

    serialize = _serialize_bytes_tail
    deserialize = classmethod(_deserialize_bytes_tail)


@dataclass
class CompressedImage(IdlStruct, typename='sensor_msgs::msg::dds_::CompressedImage_'):
    header: Header = field(default_factory=Header)
    format: str = ''  # noqa: A003 (the field's name in sensor_msgs/msg/CompressedImage)
    data: types.sequence[types.uint8] = field(default_factory=list)

    serialize = _serialize_bytes_tail
    deserialize = classmethod(_deserialize_bytes_tail)


@dataclass
class String(IdlStruct, typename='std_msgs::msg::dds_::String_'):
    data: str = ''


@dataclass
class KeyValue(IdlStruct, typename='diagnostic_msgs::msg::dds_::KeyValue_'):
    key: str = ''
    value: str = ''


@dataclass
class DiagnosticStatus(IdlStruct, typename='diagnostic_msgs::msg::dds_::DiagnosticStatus_'):
    level: types.byte = 0           # OK=0, WARN=1, ERROR=2, STALE=3
    name: str = ''
    message: str = ''
    hardware_id: str = ''
    values: types.sequence[KeyValue] = field(default_factory=list)


@dataclass
class DiagnosticArray(IdlStruct, typename='diagnostic_msgs::msg::dds_::DiagnosticArray_'):
    header: Header = field(default_factory=Header)
    status: types.sequence[DiagnosticStatus] = field(default_factory=list)


@dataclass
class Float64Stamped(IdlStruct,
                     typename='autoware_internal_debug_msgs::msg::dds_::Float64Stamped_'):
    stamp: Time = field(default_factory=Time)
    data: types.float64 = 0.0


# ROS 2 type name -> IDL struct
TYPES: dict[str, type] = {
    'builtin_interfaces/msg/Time': Time,
    'std_msgs/msg/Header': Header,
    'std_msgs/msg/String': String,
    'sensor_msgs/msg/Image': Image,
    'sensor_msgs/msg/CompressedImage': CompressedImage,
    'diagnostic_msgs/msg/KeyValue': KeyValue,
    'diagnostic_msgs/msg/DiagnosticStatus': DiagnosticStatus,
    'diagnostic_msgs/msg/DiagnosticArray': DiagnosticArray,
    'autoware_internal_debug_msgs/msg/Float64Stamped': Float64Stamped,
}


def dds_type(msgtype: str) -> type:
    """Return the IDL struct for a ROS 2 type name ('sensor_msgs/msg/Image')."""
    try:
        return TYPES[msgtype]
    except KeyError:
        raise KeyError(f'no DDS type for {msgtype!r}: known are {", ".join(sorted(TYPES))}') \
            from None


def make(cls: type, values: dict[str, typing.Any]) -> typing.Any:
    """Build `cls` from plain values: nested structs from dicts, struct sequences from lists."""
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for name, value in values.items():
        if name not in hints:
            raise TypeError(f'{cls.__name__} has no field {name!r}')
        hint = hints[name]
        if isinstance(value, dict) and isinstance(hint, type) and issubclass(hint, IdlStruct):
            value = make(hint, value)
        elif isinstance(value, (list, tuple)) and typing.get_origin(hint) is typing.Annotated:
            meta = typing.get_args(hint)[1]
            sub = getattr(meta, 'subtype', None)
            if isinstance(sub, type) and issubclass(sub, IdlStruct):
                value = [make(sub, v) if isinstance(v, dict) else v for v in value]
        kwargs[name] = value
    return cls(**kwargs)
