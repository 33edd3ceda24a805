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

"""The one image reader: depth conversion, pixel limit before decoding, one-line refusals."""

from __future__ import annotations

import io
import resource
import struct
import zlib

import cv2
import numpy as np
from PIL import Image
import pytest

from ros2_gmskip.errors import ImageError
from ros2_gmskip.images import (
    decode_image, DEFAULT_MAX_PIXELS, header_size, read_image_file, to_rgb8)


def png(pixels: np.ndarray) -> bytes:
    """Encode with OpenCV (keeps 16-bit; BGR order for colour)."""
    ok, buf = cv2.imencode('.png', pixels)
    assert ok
    return buf.tobytes()


def pil_bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int, header_only: bool = False) -> bytes:
    """
    Return an 8-bit grey PNG of zeros, built row by row (never the whole image in memory).

    `header_only`: the IDAT holds no rows (what a reader sees before decoding is the same).
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack('>I', len(body)) + kind + body
                + struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))

    z = zlib.compressobj(1)
    rows = bytes(width + 1) * 64                     # filter byte 0 + zeros, 64 rows at a time
    idat = b'' if header_only else b''.join(z.compress(rows) for _ in range(height // 64))
    idat += b'' if header_only else z.compress(bytes(width + 1) * (height % 64))
    idat += z.flush()
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', idat)
            + chunk(b'IEND', b''))


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert '\n' not in text and text, text
    return text


def test_sixteen_bit_grey_is_scaled_as_cv_bridge_does():
    values = np.array([[0, 1, 128, 129, 257, 32768, 65280, 65535]], np.uint16)
    rgb = decode_image(png(values))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 8, 3)


def test_sixteen_bit_grey_png_is_not_clipped_to_white():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    rgb = decode_image(png(ramp))
    assert (rgb == 255).mean() < 0.01                    # Pillow's convert('RGB') gave 99.6 %
    assert abs(float(rgb.mean()) - float(ramp.mean()) * 255 / 65535) < 0.5


def test_sixteen_bit_colour_keeps_channel_order():
    bgr16 = np.zeros((2, 3, 3), np.uint16)
    bgr16[..., 2] = 65535                                # red in OpenCV's BGR order
    rgb = decode_image(png(bgr16))
    assert rgb[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize('mode,value,expected', [
    ('L', 77, [77, 77, 77]), ('RGB', (10, 20, 30), [10, 20, 30]),
    ('RGBA', (10, 20, 30, 0), [10, 20, 30]), ('LA', (90, 10), [90, 90, 90]),
    ('P', 3, None), ('1', 1, [255, 255, 255])])
def test_eight_bit_modes_decode_to_rgb(mode, value, expected):
    rgb = decode_image(pil_bytes(Image.new(mode, (5, 4), value), 'PNG'))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    if expected is not None:
        assert rgb[0, 0].tolist() == expected


def test_jpeg_round_trip_is_close():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (200, 30, 40)
    data = pil_bytes(Image.fromarray(rgb), 'JPEG')
    out = decode_image(data)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 4


@pytest.mark.parametrize('array,depth', [
    (np.full((4, 5), 0.5, np.float32), '32-bit float'),
    (np.full((4, 5), 70000, np.int32), '32-bit signed integer')])
def test_float_and_32_bit_files_are_refused(array, depth):
    with pytest.raises(ImageError) as excinfo:
        decode_image(pil_bytes(Image.fromarray(array), 'TIFF'), what="image 'x.tiff'")
    text = one_line(excinfo)
    assert text.startswith("image 'x.tiff' has " + depth) and 'convert it' in text


@pytest.mark.parametrize('dtype', [np.float32, np.float64, np.int16, np.int32, np.bool_])
def test_to_rgb8_refuses_other_depths(dtype):
    with pytest.raises(ImageError, match='no fixed range'):
        to_rgb8(np.zeros((2, 2), dtype))


def test_to_rgb8_shapes():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(to_rgb8(grey), np.dstack([grey] * 3))
    np.testing.assert_array_equal(to_rgb8(grey[..., None]), np.dstack([grey] * 3))
    rgba = np.zeros((2, 3, 4), np.uint8) + np.array([1, 2, 3, 4], np.uint8)
    assert to_rgb8(rgba)[0, 0].tolist() == [1, 2, 3]
    assert to_rgb8(rgba, order='bgr')[0, 0].tolist() == [3, 2, 1]
    with pytest.raises(ImageError, match='shape'):
        to_rgb8(np.zeros((2, 3, 2), np.uint8))


def test_pixel_limit_is_checked_before_decoding():
    """A 150 MP grey PNG of 650 kB: refused from its header, without the 450 MB of pixels."""
    data = bomb_png(15000, 10000)
    assert len(data) < 1_000_000
    assert header_size(data, 'x') == (15000, 10000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, what="image 'bomb.png'")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    text = one_line(excinfo)
    assert text == ("image 'bomb.png' is 15000x10000 = 150,000,000 pixels, over the limit of "
                    f'{DEFAULT_MAX_PIXELS:,}: shrink it, or raise the pixel limit '
                    '(--max-image-pixels / parameter max_image_pixels)')
    assert grown_mb < 50, f'peak memory grew {grown_mb:.0f} MB: the image was decoded'


def test_bomb_png_is_a_real_image():
    rgb = decode_image(bomb_png(300, 200))
    assert rgb.shape == (200, 300, 3) and not rgb.any()


def test_pixel_limit_is_a_parameter():
    data = pil_bytes(Image.new('RGB', (40, 30)), 'PNG')
    assert decode_image(data, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageError, match='40x30 = 1,200 pixels, over the limit of 1,199'):
        decode_image(data, max_pixels=1199)


def test_over_pillows_own_bomb_limit_reads_as_our_limit():
    with pytest.raises(ImageError) as excinfo:
        decode_image(bomb_png(20000, 20000, header_only=True), what='x')
    assert one_line(excinfo).startswith('x is 400,000,000 pixels, over the limit of 50,000,000')


def test_over_pillows_own_bomb_limit_says_so():
    data = bomb_png(20000, 20000, header_only=True)
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, max_pixels=10 ** 12)
    assert '400,000,000 pixels' in one_line(excinfo)


@pytest.mark.parametrize('data,message', [
    (b'', 'is empty'),
    (b'hello, not an image', 'not an image file this reader knows'),
    (png(np.zeros((8, 8), np.uint8))[:40], 'starts like a png file but its header is truncated'),
    (png(np.zeros((8, 8), np.uint8))[:-20], 'could not be decoded'),
])
def test_corrupt_data_gives_one_line(data, message, capfd):
    with pytest.raises(ImageError) as excinfo:
        decode_image(data, what='compressed image')
    text = one_line(excinfo)
    assert text.startswith('compressed image') and message in text
    assert capfd.readouterr().err == ''                 # no OpenCV WARN lines besides it


def test_files_folder_missing_and_good(tmp_path):
    with pytest.raises(ImageError) as excinfo:
        read_image_file(tmp_path)
    assert 'is a folder, not an image file' in one_line(excinfo)
    with pytest.raises(ImageError) as excinfo:
        read_image_file(tmp_path / 'nope.png')
    assert 'does not exist' in one_line(excinfo)
    (tmp_path / 'a.png').write_bytes(pil_bytes(Image.new('RGB', (3, 2), (1, 2, 3)), 'PNG'))
    assert read_image_file(tmp_path / 'a.png')[1, 2].tolist() == [1, 2, 3]


def test_buffers_of_every_kind_decode():
    data = pil_bytes(Image.new('RGB', (3, 2), (9, 8, 7)), 'PNG')
    for buf in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert decode_image(buf)[0, 0].tolist() == [9, 8, 7]
