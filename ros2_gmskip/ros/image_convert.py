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
sensor_msgs/Image and sensor_msgs/CompressedImage <-> RGB uint8 arrays, without cv_bridge.

The functions duck-type on the message fields, so they take a rosbags message, an rclpy message
or a Cyclone DDS IDL dataclass alike:

- Image: `.height .width .encoding .is_bigendian .step .data`
- CompressedImage: `.format .data`

`data` may be bytes, bytearray, memoryview, a numpy uint8 array, an `array.array('B')` (what
rclpy gives) or a list of ints; everything but a list is viewed without a copy.

Encodings follow sensor_msgs/image_encodings.hpp and cv_bridge. Notes:

- `8UC3` carries no channel order; it is read as BGR, the order of the cv::Mat it usually comes
  from. `8UC1` / `16UC1` are read as grey like `mono8` / `mono16`.
- 16-bit encodings (mono16, 16UC1, rgb16, bgr16, rgba16, bgra16) and 16-bit PNGs are scaled to
  8 bits by 255/65535 as cv_bridge does; float and signed encodings (32FC1, 16SC1, ...: depth
  and other measurements, no fixed range) are refused in one line, as cv_bridge refuses to
  convert them to rgb8. Both go through `ros2_gmskip.images`, the reader image files use too.
- A frame over `max_pixels` (width x height) is refused before its pixels are touched; for a
  CompressedImage the size is read from the jpeg / png header, before decoding.
- OpenCV names a Bayer pattern by the 2x2 block starting at the second row and column, so ROS
  `bayer_rggb8` is OpenCV `BayerBG` (the same table as cv_bridge; the tests check it against a
  mosaic sampled from a known image).

Bad input raises `MessageError` with a one-line reason, never another exception type.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import cv2
import numpy as np
from ros2_gmskip.errors import ImageError, MessageError
from ros2_gmskip.images import check_pixels, decode_image, DEFAULT_MAX_PIXELS, to_rgb8


class _Encoding(NamedTuple):
    channels: int          # values per pixel in the row layout (yuv422: 2 bytes per pixel)
    itemsize: int          # bytes per value
    to_rgb: int | None     # cv2.cvtColor code to RGB; None: already RGB (or handled apart)


# Canonical ROS names (case as in image_encodings.hpp) -> layout and conversion.
_ENCODINGS: dict[str, _Encoding] = {
    'rgb8': _Encoding(3, 1, None),
    'bgr8': _Encoding(3, 1, cv2.COLOR_BGR2RGB),
    'rgba8': _Encoding(4, 1, cv2.COLOR_RGBA2RGB),
    'bgra8': _Encoding(4, 1, cv2.COLOR_BGRA2RGB),
    'mono8': _Encoding(1, 1, cv2.COLOR_GRAY2RGB),
    'mono16': _Encoding(1, 2, cv2.COLOR_GRAY2RGB),
    'rgb16': _Encoding(3, 2, None),
    'bgr16': _Encoding(3, 2, cv2.COLOR_BGR2RGB),
    'rgba16': _Encoding(4, 2, cv2.COLOR_RGBA2RGB),
    'bgra16': _Encoding(4, 2, cv2.COLOR_BGRA2RGB),
    '8UC1': _Encoding(1, 1, cv2.COLOR_GRAY2RGB),
    '8UC3': _Encoding(3, 1, cv2.COLOR_BGR2RGB),
    '16UC1': _Encoding(1, 2, cv2.COLOR_GRAY2RGB),
    # ROS pattern (first row, second row) -> OpenCV name of the pattern one pixel in, as cv_bridge.
    'bayer_rggb8': _Encoding(1, 1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': _Encoding(1, 1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': _Encoding(1, 1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': _Encoding(1, 1, cv2.COLOR_BayerGB2RGB),
    # Packed 4:2:2, BT.601 limited range: yuv422 / uyvy = U0 Y0 V0 Y1, yuyv = Y0 U0 Y1 V0.
    'yuv422': _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuyv': _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUYV),
    'yuv422_yuy2': _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUYV),
}

SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)

# Lookup is case-insensitive ('8uc1', 'RGB8' are seen in the wild).
_BY_LOWER: dict[str, str] = {name.lower(): name for name in _ENCODINGS}

_SIXTEEN_BIT = ('mono16', '16UC1')          # grey; the colour ones are <order>16
# OpenCV-style type names of image_encodings.hpp that hold measurements, not camera pixels.
_MEASUREMENT = re.compile(r'(8|16|32|64)([SF])C(\d)')
_YUV422 = ('yuv422', 'uyvy', 'yuyv', 'yuv422_yuy2')
_BAYER_CHANNELS = {'r': 0, 'g': 1, 'b': 2}

_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def canonical_encoding(encoding: str) -> str:
    """Return the ROS spelling of `encoding`, or raise MessageError naming the supported ones."""
    name = _BY_LOWER.get(str(encoding).strip().lower())
    measured = _MEASUREMENT.fullmatch(str(encoding).strip().upper())
    if name is None and measured:
        bits, kind = measured.group(1), 'float' if measured.group(2) == 'F' else 'signed'
        raise MessageError(f'image encoding {encoding!r} holds {bits}-bit {kind} values (depth '
                           'or another measurement) with no fixed range to scale to 8 bits: '
                           'publish a camera image (rgb8, bgr8, mono8, mono16, ...)')
    if name is None:
        raise MessageError(f'unknown image encoding {encoding!r}: supported are '
                           f'{", ".join(SUPPORTED_ENCODINGS)}')
    return name


def _flat_uint8(data: Any) -> np.ndarray:
    """Return `data` as a 1-D contiguous uint8 array, a view wherever the input allows one."""
    try:
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8:
                raise MessageError(f'image data has dtype {data.dtype}, expected uint8')
            return np.ascontiguousarray(data).reshape(-1)
        if isinstance(data, (list, tuple)):
            return np.asarray(data, dtype=np.uint8)     # the one path that copies
        # bytes, bytearray, memoryview, array.array('B'), any buffer of bytes.
        view = memoryview(data)
        if view.itemsize != 1:
            raise MessageError(f'image data has items of {view.itemsize} bytes, expected 1')
        return np.frombuffer(view.cast('B') if view.format != 'B' else view, dtype=np.uint8)
    except MessageError:
        raise
    except (TypeError, ValueError, OverflowError) as err:
        raise MessageError(f'image data of type {type(data).__name__} is not a byte '
                           f'sequence: {err}') from err


def _field(msg: Any, name: str) -> Any:
    try:
        return getattr(msg, name)
    except AttributeError:
        raise MessageError(f'{type(msg).__name__} has no field {name!r}: not an image '
                           f'message') from None


def _int_field(msg: Any, name: str) -> int:
    value = _field(msg, name)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise MessageError(f'image field {name!r} is not an integer: {value!r}') from None


def _pixels(msg: Any, max_pixels: int) -> tuple[str, np.ndarray]:
    """Return (encoding, array (H, W, C) of the message's values, row padding dropped, a view)."""
    encoding = canonical_encoding(_field(msg, 'encoding'))
    spec = _ENCODINGS[encoding]
    H, W = _int_field(msg, 'height'), _int_field(msg, 'width')
    step = _int_field(msg, 'step')
    if H <= 0 or W <= 0:
        raise MessageError(f'image has zero size: width {W}, height {H}')
    try:
        check_pixels(W, H, max_pixels, f'{encoding} image')
    except ImageError as err:
        raise MessageError(str(err)) from None
    if encoding in _YUV422 and W % 2:
        raise MessageError(f'{encoding} image has odd width {W}: 4:2:2 needs pixel pairs')
    bpp = spec.channels * spec.itemsize
    if step < W * bpp:
        raise MessageError(f'{encoding} image step {step} < width {W} x {bpp} bytes per pixel '
                           f'= {W * bpp}')
    flat = _flat_uint8(_field(msg, 'data'))
    if flat.size < step * H:
        raise MessageError(f'{encoding} image data has {flat.size} bytes, expected step x height '
                           f'= {step} x {H} = {step * H}')
    dtype = np.dtype(np.uint8)
    if spec.itemsize == 2:
        dtype = np.dtype('>u2' if _field(msg, 'is_bigendian') else '<u2')
    # (H, W, C) view: rows `step` bytes apart, the padding at each row's end is never touched.
    arr = np.ndarray(shape=(H, W, spec.channels), dtype=dtype, buffer=flat,
                     strides=(step, bpp, spec.itemsize))
    return encoding, arr


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """
    Convert a sensor_msgs/Image to RGB uint8 (H, W, 3), C-contiguous.

    For an unpadded rgb8 image the result is a view of `msg.data` (read-only when the data is
    bytes); copy it before writing into it. More than `max_pixels` pixels: MessageError.
    """
    encoding, arr = _pixels(msg, max_pixels)             # (H, W, C)
    code = _ENCODINGS[encoding].to_rgb
    if _ENCODINGS[encoding].itemsize == 2:               # 16 -> 8 bit as cv_bridge scales
        order = 'bgr' if encoding.startswith('bgr') else 'rgb'
        try:
            return to_rgb8(arr, order=order, what=f'{encoding} image')
        except ImageError as err:
            raise MessageError(str(err)) from None
    try:
        if arr.shape[2] == 1:
            arr = arr[..., 0]                            # (H, W) grey or Bayer mosaic
        if code is None:
            return np.ascontiguousarray(arr)
        if encoding.startswith('bayer') or encoding in _YUV422:
            arr = np.ascontiguousarray(arr)              # drops row padding for OpenCV
        return cv2.cvtColor(arr, code)
    except cv2.error as err:
        reason = str(err).strip().splitlines()[-1]
        raise MessageError(f'{encoding} image of {arr.shape[1]}x{arr.shape[0]} could not be '
                           f'converted: {reason}') from err


def _compressed_kind(fmt: str, data: np.ndarray) -> str:
    """'jpeg' or 'png' from the format string ('jpeg', 'bgr8; jpeg compressed bgr8', ...)."""
    text = str(fmt).strip().lower()
    if 'compresseddepth' in text.replace(' ', ''):
        raise MessageError(f'unsupported compressed image format {fmt!r}: compressedDepth '
                           f'images are depth, not camera images')
    if 'jpeg' in text or 'jpg' in text:
        return 'jpeg'
    if 'png' in text:
        return 'png'
    if not text:                                         # some drivers leave it empty
        head = data[:8].tobytes()
        if head.startswith(_JPEG_MAGIC):
            return 'jpeg'
        if head.startswith(_PNG_MAGIC):
            return 'png'
    raise MessageError(f'unknown compressed image format {fmt!r}: supported are jpeg and png')


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """
    Decode a sensor_msgs/CompressedImage (jpeg or png) to RGB uint8 (H, W, 3).

    The size in the header is checked against `max_pixels` before decoding.
    """
    data = _flat_uint8(_field(msg, 'data'))
    fmt = _field(msg, 'format')
    kind = _compressed_kind(fmt, data)
    if data.size == 0:
        raise MessageError(f'compressed image ({fmt!r}) has no data')
    try:
        return decode_image(data, max_pixels, f'compressed {kind} image ({data.size} bytes)')
    except ImageError as err:
        raise MessageError(str(err)) from None


def _rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited range, the inverse of OpenCV's YUV2RGB_UYVY/YUYV: (H, W, 3) float Y, U, V."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.stack([y, u, v], axis=-1)


def _pack_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """RGB (H, W, 3), W even -> packed (H, W, 2) in `order` (uyvy / yuyv); pair chroma averaged."""
    H, W, _ = rgb.shape
    yuv = _rgb_to_yuv(rgb)                               # (H, W, 3)
    y = yuv[..., 0]
    u = yuv[..., 1].reshape(H, W // 2, 2).mean(axis=2)   # (H, W/2)
    v = yuv[..., 2].reshape(H, W // 2, 2).mean(axis=2)
    out = np.empty((H, W // 2, 4), np.float32)           # one macropixel = 4 bytes, 2 pixels
    if order == 'uyvy':
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(H, W, 2)


def _bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """RGB (H, W, 3) -> (H, W) mosaic; pattern like 'rggb' = row 0: R G, row 1: G B."""
    H, W, _ = rgb.shape
    mosaic = np.empty((H, W), np.uint8)
    for dy in range(2):
        for dx in range(2):
            channel = _BAYER_CHANNELS[pattern[2 * dy + dx]]
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel]
    return mosaic


def rgb_to_image_fields(rgb: np.ndarray, encoding: str = 'rgb8') -> dict:
    """
    Return the fields of a sensor_msgs/Image holding `rgb` (H, W, 3 uint8) in `encoding`.

    Returns {height, width, encoding, is_bigendian, step, data (bytes)}; rows are unpadded and
    16-bit values little-endian (value x 257, so reading scales it back exactly). Lossy encodings
    (mono, Bayer, 4:2:2) keep what they can. The header is the caller's.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise MessageError(f'expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} '
                           f'{tuple(rgb.shape)}')
    encoding = canonical_encoding(encoding)
    H, W, _ = rgb.shape
    if encoding in ('rgb8',):
        out = rgb
    elif encoding in ('bgr8', '8UC3'):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == 'rgba8':
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    elif encoding == 'bgra8':
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    elif encoding in ('mono8', '8UC1'):
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif encoding in _SIXTEEN_BIT:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16)
        out = (grey * np.uint16(257)).astype('<u2')
    elif encoding.endswith('16'):                        # rgb16, bgr16, rgba16, bgra16
        out = rgb_to_image_fields(rgb, encoding[:-2] + '8')['data']
        channels = len(encoding) - 2
        out = np.frombuffer(out, np.uint8).reshape(H, W, channels)
        out = (out.astype(np.uint16) * np.uint16(257)).astype('<u2')
    elif encoding.startswith('bayer_'):
        out = _bayer_mosaic(rgb, encoding[len('bayer_'):len('bayer_') + 4])
    else:                                                # 4:2:2
        if W % 2:
            raise MessageError(f'{encoding} needs an even width, got {W}')
        out = _pack_yuv422(rgb, 'uyvy' if encoding in ('yuv422', 'uyvy') else 'yuyv')
    data = np.ascontiguousarray(out).tobytes()
    return {'height': H, 'width': W, 'encoding': encoding, 'is_bigendian': 0,
            'step': len(data) // H, 'data': data}


def rgb_to_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 (H, W, 3) image (for CompressedImage with format 'jpeg')."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise MessageError(f'expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} '
                           f'{tuple(rgb.shape)}')
    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MessageError(f'could not JPEG-encode a {rgb.shape[1]}x{rgb.shape[0]} image')
    return buf.tobytes()
