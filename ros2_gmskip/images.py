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
Read pixels the one way: image files, CompressedImage bytes and raw Image arrays end here.

    rgb = read_image_file(Path('frame.png'), max_pixels=50_000_000)     # RGB uint8 (H, W, 3)
    rgb = decode_image(jpeg_bytes, max_pixels, what='compressed image')
    rgb = to_rgb8(mono16_array, what='mono16 image')

Policy (every path that reads pixels follows it, so a frame reads the same from a file, a bag or
a topic):

- The pixel count is checked against `max_pixels` from the header, before anything is decoded:
  Pillow's `Image.open` parses only the header, so a 1 kB PNG that would inflate to gigabytes is
  refused in one line without allocating them.
- Decoding is OpenCV's, keeping the stored depth (IMREAD_ANYDEPTH | IMREAD_ANYCOLOR; alpha is
  dropped, EXIF orientation applied).
- 8-bit pixels are used as they are. 16-bit pixels are scaled to 8 bits by 255/65535 with
  rounding, which is what cv_bridge does (`convertTo(CV_8U, 255/65535)`) when a mono16 / 16UC1
  image is converted to mono8 / rgb8: the full 16-bit range maps to the full 8-bit range, so a
  16-bit PNG is neither clipped to white nor darkened.
- Float, signed and 32-bit pixels have no fixed range to scale from (cv_bridge refuses to convert
  them to a colour encoding as well): they are refused with one line saying so.

Errors are `ImageError` with a one-line message naming the input and what to do.
"""

from __future__ import annotations

import io
from pathlib import Path
import re
from typing import Any
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ros2_gmskip.errors import ImageError

DEFAULT_MAX_PIXELS = 50_000_000     # 50 MP: 8K video is 33 MP; a 50 MP RGB frame is 150 MB
SIXTEEN_BIT_SCALE = 255.0 / 65535.0  # cv_bridge's factor from 16 to 8 bits
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# OpenCV's decoders print WARN lines to stderr for corrupt data; the error raised here says it
# in one line instead, so only OpenCV's errors are let through.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
_MAGIC = ((b'\x89PNG\r\n\x1a\n', 'png'), (b'\xff\xd8\xff', 'jpeg'), (b'GIF8', 'gif'),
          (b'BM', 'bmp'), (b'II*\x00', 'tiff'), (b'MM\x00*', 'tiff'))


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """Raise ImageError if a `width` x `height` image is over `max_pixels` or empty."""
    if width <= 0 or height <= 0:
        raise ImageError(f'{what} has zero size: width {width}, height {height}')
    if width * height > max_pixels:
        _over_limit(f'{width}x{height} = {width * height:,}', max_pixels, what)


def _over_limit(size: str, max_pixels: int, what: str) -> None:
    raise ImageError(f'{what} is {size} pixels, over the limit of {max_pixels:,}: shrink it, or '
                     'raise the pixel limit (--max-image-pixels / parameter max_image_pixels)')


def header_size(data: bytes | memoryview, what: str,
                max_pixels: int | None = None) -> tuple[int, int]:
    """Return (width, height) from an encoded image's header, without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)   # our limit rules
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as err:     # Pillow's own hard limit (2 x 89.5 MP)
        found = re.search(r'\((\d+) pixels\)', str(err))
        if found and max_pixels is not None and int(found.group(1)) > max_pixels:
            _over_limit(f'{int(found.group(1)):,}', max_pixels, what)
        size = f'{int(found.group(1)):,} pixels' if found else 'too many pixels'
        raise ImageError(f"{what} is {size}, over Pillow's hard limit of "
                         f'{2 * Image.MAX_IMAGE_PIXELS:,} (a decompression bomb guard): shrink '
                         'it') from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        kind = _kind_from_magic(bytes(data[:12]))
        if kind:
            why = '' if isinstance(err, UnidentifiedImageError) else f' ({_reason(err)})'
            raise ImageError(f'{what} starts like a {kind} file but its header is truncated or '
                             f'corrupt{why}: re-encode it') from None
        raise ImageError(f'{what} is not an image file this reader knows (png, jpeg, bmp, tiff, '
                         'webp, ppm, ...): convert it to png or jpeg') from None


def decode_image(data: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
                 what: str = 'image') -> np.ndarray:
    """Decode encoded image bytes (png, jpeg, ...) to RGB uint8 (H, W, 3), limit checked first."""
    buf = np.frombuffer(memoryview(data).cast('B'), dtype=np.uint8)
    if buf.size == 0:
        raise ImageError(f'{what} is empty (0 bytes)')
    width, height = header_size(buf, what, max_pixels)
    check_pixels(width, height, max_pixels, what)
    try:
        pixels = cv2.imdecode(buf, _DECODE_FLAGS)
    except cv2.error as err:
        raise ImageError(f'{what} could not be decoded: {_reason(err)}') from None
    if pixels is None or pixels.size == 0:
        raise ImageError(f'{what} could not be decoded ({buf.size} bytes): the data is corrupt '
                         'or truncated')
    return to_rgb8(pixels, order='bgr', what=what)


def read_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); ImageError naming the file otherwise."""
    path = Path(path)
    what = f'image {str(path)!r}'
    if path.is_dir():
        raise ImageError(f'{what} is a folder, not an image file: pass a png or jpeg file')
    if not path.exists():
        raise ImageError(f'{what} does not exist: check the path')
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f'{what} cannot be read: {err.strerror or err}') from None
    return decode_image(data, max_pixels, what)


def to_rgb8(pixels: np.ndarray, order: str = 'rgb', what: str = 'image') -> np.ndarray:
    """
    Convert decoded pixels (H, W) or (H, W, C) to C-contiguous RGB uint8 (H, W, 3).

    `order` is the channel order of 3- and 4-channel input: 'rgb' or 'bgr' (OpenCV's). uint16 is
    scaled by 255/65535 as cv_bridge does; other dtypes than uint8 / uint16 are refused.
    """
    if order not in ('rgb', 'bgr'):
        raise ValueError(f'order must be rgb or bgr, got {order!r}')
    channels = 1 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else 0
    if channels not in (1, 3, 4):
        raise ImageError(f'{what} has shape {pixels.shape}: expected (H, W) grey or (H, W, 3/4) '
                         'colour')
    if pixels.dtype == np.uint16 or (pixels.dtype.kind == 'u' and pixels.dtype.itemsize == 2):
        # convertScaleAbs is convertTo(CV_8U, alpha) for unsigned input: round, saturate.
        pixels = cv2.convertScaleAbs(pixels.astype(np.uint16, copy=False),
                                     alpha=SIXTEEN_BIT_SCALE)
    elif pixels.dtype != np.uint8:
        raise ImageError(f'{what} has {_depth_name(pixels.dtype)} pixels, which have no fixed '
                         'range to scale to 8 bits: convert it to an 8- or 16-bit image first')
    if channels == 1:
        grey = pixels if pixels.ndim == 2 else pixels[..., 0]
        return cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        code = cv2.COLOR_BGRA2RGB if order == 'bgr' else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(np.ascontiguousarray(pixels), code)
    if order == 'bgr':
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(pixels)


def _kind_from_magic(head: bytes) -> str | None:
    """Return the format whose magic number `head` starts with, if any."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return 'webp' if head[:4] == b'RIFF' and head[8:12] == b'WEBP' else None


def _depth_name(dtype: np.dtype) -> str:
    """Return '32-bit float', '16-bit signed', ... for a numpy dtype."""
    kind = {'f': 'float', 'i': 'signed integer', 'u': 'unsigned integer', 'b': 'boolean'}
    return f'{8 * dtype.itemsize}-bit {kind.get(dtype.kind, str(dtype))}'


def _reason(err: BaseException) -> str:
    """Return the last non-empty line of an error's text (OpenCV puts the reason last)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
