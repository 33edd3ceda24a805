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

"""image_convert vs OpenCV references: every encoding, padded rows, byte containers, errors."""

from __future__ import annotations

import array
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pytest
from ros2_gmskip.errors import MessageError
from ros2_gmskip.ros.image_convert import (
    compressed_to_rgb,
    image_to_rgb,
    rgb_to_image_fields,
    rgb_to_jpeg,
    SUPPORTED_ENCODINGS,
)
from rosbags.typesys import get_typestore, Stores

TS = get_typestore(Stores.ROS2_HUMBLE)
RosImage = TS.types['sensor_msgs/msg/Image']
RosCompressed = TS.types['sensor_msgs/msg/CompressedImage']
H, W = 12, 16


@dataclass
class ImageMsg:
    """Stand-in for an rclpy / Cyclone DDS sensor_msgs/Image."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: Any


# Stand-in for a sensor_msgs/CompressedImage: its field `format` would shadow a builtin as a
# class attribute (A003), so no class body.
CompressedMsg = namedtuple('CompressedMsg', ['format', 'data'])


def rng_rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    """Return a gradient image (JPEG-friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)],
                    axis=-1).astype(np.uint8)


def make_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False,
             container=bytes, cls=ImageMsg) -> Any:
    """Message holding `pixels` (H, W[, C]) row by row, each row followed by `pad` junk bytes."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype('>u2' if bigendian else '<u2')
    rows = pixels.reshape(h, -1).view(np.uint8)                       # (H, row bytes)
    junk = np.full((h, pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    if container is list:
        data = list(data)
    elif container is array.array:
        data = array.array('B', data)
    elif container is np.ndarray:
        data = np.frombuffer(data, np.uint8)
    elif container is not bytes:
        data = container(data)
    return cls(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
               step=rows.shape[1] + pad, data=data)


def grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


# --- colour encodings ------------------------------------------------------------------------

FORWARD = {   # encoding -> OpenCV forward conversion from RGB
    'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA,
    'bgra8': cv2.COLOR_RGB2BGRA, '8UC3': cv2.COLOR_RGB2BGR,
}


@pytest.mark.parametrize('encoding', list(FORWARD))
@pytest.mark.parametrize('pad', [0, 5])
def test_colour_encodings_exact(encoding, pad):
    rgb = rng_rgb(1)
    pixels = rgb if FORWARD[encoding] is None else cv2.cvtColor(rgb, FORWARD[encoding])
    out = image_to_rgb(make_msg(pixels, encoding, pad=pad))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
@pytest.mark.parametrize('pad', [0, 3])
def test_mono8(encoding, pad):
    grey = cv2.cvtColor(rng_rgb(2), cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(image_to_rgb(make_msg(grey, encoding, pad=pad)), grey3(grey))


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True])
@pytest.mark.parametrize('pad', [0, 4])
def test_mono16_scaled_and_endianness(encoding, bigendian, pad):
    grey16 = np.random.default_rng(3).integers(0, 65536, (H, W), dtype=np.uint16)
    out = image_to_rgb(make_msg(grey16, encoding, pad=pad, bigendian=bigendian))
    # cv_bridge: convertTo(CV_8U, 255 / 65535), i.e. rounded, full range to full range
    expected = np.rint(grey16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, grey3(expected))


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16', 'rgba16', 'bgra16'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_colour16_scaled_in_channel_order(encoding, bigendian):
    rgb16 = np.random.default_rng(4).integers(0, 65536, (H, W, 3), dtype=np.uint16)
    layout = rgb16[..., ::-1] if encoding.startswith('bgr') else rgb16
    if encoding.endswith('a16'):
        layout = np.concatenate([layout, np.full((H, W, 1), 7, np.uint16)], axis=2)
    data = np.ascontiguousarray(layout).astype('>u2' if bigendian else '<u2').tobytes()
    msg = ImageMsg(H, W, encoding, int(bigendian), W * layout.shape[2] * 2, data)
    expected = np.rint(rgb16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb(msg), expected)


def test_mono16_endianness_matters():
    grey16 = np.full((2, 2), 0x1234, np.uint16)
    little = make_msg(grey16, 'mono16', bigendian=False)
    assert image_to_rgb(little)[0, 0, 0] == 0x12
    little.is_bigendian = 1                       # same bytes read big-endian: 0x3412
    assert image_to_rgb(little)[0, 0, 0] == 0x34


# --- Bayer: mosaic sampled from a known image ------------------------------------------------

CHANNEL = {'r': 0, 'g': 1, 'b': 2}
# cv_bridge's table (ROS pattern -> OpenCV code), the reference the module must agree with.
CV_BRIDGE_BAYER = {'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
                   'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample the channel the ROS pattern names at each pixel ('rggb': R G / G B)."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, CHANNEL[pattern[2 * dy + dx]]]
    return out


@pytest.mark.parametrize('encoding', list(CV_BRIDGE_BAYER))
@pytest.mark.parametrize('pad', [0, 6])
def test_bayer_recovers_a_flat_colour(encoding, pad):
    # A flat colour demosaics exactly away from the border: a wrong pattern swaps R / B or
    # mixes G into them, so this pins the ROS -> OpenCV naming.
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[...] = (200, 100, 30)
    out = image_to_rgb(make_msg(mosaic(rgb, encoding[6:10]), encoding, pad=pad))
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])


@pytest.mark.parametrize('encoding', list(CV_BRIDGE_BAYER))
def test_bayer_matches_cv_bridge_table(encoding):
    m = mosaic(rng_rgb(4), encoding[6:10])
    np.testing.assert_array_equal(image_to_rgb(make_msg(m, encoding, pad=2)),
                                  cv2.cvtColor(m, CV_BRIDGE_BAYER[encoding]))


def test_bayer_all_listed():
    assert set(CV_BRIDGE_BAYER) <= set(SUPPORTED_ENCODINGS)


# --- packed 4:2:2 ----------------------------------------------------------------------------

def bt601(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y, U, V (float), as OpenCV's YUV2RGB_UYVY / _YUYV assume."""
    m = np.array([[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]])
    return rgb.astype(np.float64) @ m.T + np.array([16.0, 128.0, 128.0])


def pack422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 3) with equal colours in each horizontal pair -> packed (H, W, 2) bytes."""
    yuv = np.rint(bt601(rgb)).clip(0, 255).astype(np.uint8)
    y0, y1 = yuv[:, 0::2, 0], yuv[:, 1::2, 0]
    u, v = yuv[:, 0::2, 1], yuv[:, 0::2, 2]
    parts = (u, y0, v, y1) if order == 'uyvy' else (y0, u, y1, v)
    return np.stack(parts, axis=-1).reshape(rgb.shape[0], rgb.shape[1], 2)


YUV = {'yuv422': ('uyvy', cv2.COLOR_YUV2RGB_UYVY), 'uyvy': ('uyvy', cv2.COLOR_YUV2RGB_UYVY),
       'yuyv': ('yuyv', cv2.COLOR_YUV2RGB_YUYV), 'yuv422_yuy2': ('yuyv', cv2.COLOR_YUV2RGB_YUYV)}


@pytest.mark.parametrize('encoding', list(YUV))
@pytest.mark.parametrize('pad', [0, 8])
def test_yuv422(encoding, pad):
    order, code = YUV[encoding]
    rgb = np.repeat(rng_rgb(5, H, W // 2), 2, axis=1)     # chroma shared by each pixel pair
    packed = pack422(rgb, order)
    out = image_to_rgb(make_msg(packed, encoding, pad=pad))
    np.testing.assert_array_equal(out, cv2.cvtColor(packed, code))     # OpenCV reference
    assert np.abs(out.astype(int) - rgb).max() <= 4                     # and the known image


@pytest.mark.parametrize('encoding', list(YUV))
def test_yuv422_chroma_order(encoding):
    red = np.zeros((2, 4, 3), np.uint8)
    red[...] = (255, 0, 0)
    out = image_to_rgb(make_msg(pack422(red, YUV[encoding][0]), encoding))
    assert out[0, 0, 0] > 240 and out[0, 0, 1] < 15 and out[0, 0, 2] < 15


# --- containers and message classes ----------------------------------------------------------

@pytest.mark.parametrize('container', [bytes, bytearray, memoryview, np.ndarray, array.array,
                                       list])
def test_data_containers(container):
    rgb = rng_rgb(6)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(image_to_rgb(make_msg(bgr, 'bgr8', pad=2, container=container)),
                                  rgb)


def test_no_copy_for_unpadded_rgb8():
    data = np.frombuffer(rng_rgb(7).tobytes(), np.uint8)
    out = image_to_rgb(ImageMsg(H, W, 'rgb8', 0, W * 3, data))
    assert np.shares_memory(out, data)


def test_rosbags_image_message():
    rgb = rng_rgb(8)
    fields = rgb_to_image_fields(rgb, 'bgr8')
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    Header = TS.types['std_msgs/msg/Header']
    Time = TS.types['builtin_interfaces/msg/Time']
    msg = RosImage(header=Header(stamp=Time(sec=1, nanosec=2), frame_id='cam'), **fields)
    raw = TS.serialize_cdr(msg, 'sensor_msgs/msg/Image')
    back = TS.deserialize_cdr(raw, 'sensor_msgs/msg/Image')
    np.testing.assert_array_equal(image_to_rgb(back), rgb)


def test_encoding_name_case_insensitive():
    grey = cv2.cvtColor(rng_rgb(9), cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(image_to_rgb(make_msg(grey, '8uc1')), grey3(grey))


# --- the inverse -----------------------------------------------------------------------------

@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', '8UC3'])
def test_rgb_to_image_fields_lossless(encoding):
    rgb = rng_rgb(10)
    fields = rgb_to_image_fields(rgb, encoding)
    assert (fields['height'], fields['width'], fields['encoding']) == (H, W, encoding)
    assert fields['step'] * H == len(fields['data']) and isinstance(fields['data'], bytes)
    np.testing.assert_array_equal(image_to_rgb(ImageMsg(**fields)), rgb)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1', 'mono16', '16UC1'])
def test_rgb_to_image_fields_grey(encoding):
    rgb = rng_rgb(11)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(image_to_rgb(ImageMsg(**rgb_to_image_fields(rgb, encoding))),
                                  grey3(grey))


@pytest.mark.parametrize('encoding', ['yuv422', 'yuyv', 'bayer_rggb8', 'bayer_gbrg8'])
def test_rgb_to_image_fields_lossy_round_trip(encoding):
    rgb = np.empty((16, 16, 3), np.uint8)
    rgb[...] = (180, 90, 40)
    out = image_to_rgb(ImageMsg(**rgb_to_image_fields(rgb, encoding)))
    assert np.abs(out[2:-2, 2:-2].astype(int) - rgb[2:-2, 2:-2]).max() <= 3


# --- compressed ------------------------------------------------------------------------------

def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize('fmt', ['png', 'bgr8; png compressed', 'rgb8; png compressed bgr8'])
def test_png_exact(fmt):
    rgb = rng_rgb(12)
    np.testing.assert_array_equal(compressed_to_rgb(CompressedMsg(fmt, png_bytes(rgb))), rgb)


@pytest.mark.parametrize('fmt', ['jpeg', 'jpg', 'rgb8; jpeg compressed bgr8', ''])
def test_jpeg_close(fmt):
    rgb = smooth_rgb()
    out = compressed_to_rgb(CompressedMsg(fmt, rgb_to_jpeg(rgb, quality=95)))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_rosbags_compressed_message_and_array_data():
    rgb = rng_rgb(13)
    Header = TS.types['std_msgs/msg/Header']
    Time = TS.types['builtin_interfaces/msg/Time']
    msg = RosCompressed(header=Header(stamp=Time(sec=0, nanosec=0), frame_id=''), format='png',
                        data=np.frombuffer(png_bytes(rgb), np.uint8))
    back = TS.deserialize_cdr(TS.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'),
                              'sensor_msgs/msg/CompressedImage')
    np.testing.assert_array_equal(compressed_to_rgb(back), rgb)
    arr = CompressedMsg('png', array.array('B', png_bytes(rgb)))
    np.testing.assert_array_equal(compressed_to_rgb(arr), rgb)


# --- bad messages: MessageError with a one-line reason, never anything else -------------------

def one_line_error(msg: Any, convert=image_to_rgb) -> str:
    with pytest.raises(MessageError) as info:
        convert(msg)
    text = str(info.value)
    assert text and '\n' not in text
    return text


def test_unknown_encoding_named_and_supported_listed():
    text = one_line_error(ImageMsg(2, 2, 'nv21', 0, 12, bytes(24)))
    assert "'nv21'" in text and 'rgb8' in text and 'bayer_rggb8' in text


@pytest.mark.parametrize('encoding,what', [
    ('32FC1', '32-bit float'), ('64FC1', '64-bit float'), ('16SC1', '16-bit signed'),
    ('32sc1', '32-bit signed'), ('8SC3', '8-bit signed')])
def test_float_and_signed_encodings_are_refused_saying_why(encoding, what):
    text = one_line_error(ImageMsg(2, 2, encoding, 0, 16, bytes(32)))
    assert text.startswith(f'image encoding {encoding!r} holds {what} values'), text
    assert 'no fixed range' in text


def test_pixel_limit_before_touching_the_data():
    msg = ImageMsg(30000, 20000, 'rgb8', 0, 60000, b'')     # 600 MP claimed, no data at all
    text = one_line_error(msg)
    assert text.startswith('rgb8 image is 20000x30000 = 600,000,000 pixels, over the limit')
    small = make_msg(rng_rgb(21), 'rgb8')
    assert image_to_rgb(small, max_pixels=H * W).shape == (H, W, 3)
    with pytest.raises(MessageError, match='over the limit of'):
        image_to_rgb(small, max_pixels=H * W - 1)


def test_compressed_pixel_limit_from_the_header():
    data = png_bytes(rng_rgb(22))
    assert compressed_to_rgb(CompressedMsg('png', data), max_pixels=H * W).shape == (H, W, 3)
    text = one_line_error(CompressedMsg('png', data),
                          lambda m: compressed_to_rgb(m, max_pixels=H * W - 1))
    assert f'= {H * W:,} pixels, over the limit of {H * W - 1:,}' in text


def test_sixteen_bit_png_is_scaled_not_clipped():
    grey16 = np.random.default_rng(5).integers(0, 65536, (H, W), dtype=np.uint16)
    data = cv2.imencode('.png', grey16)[1].tobytes()
    expected = np.rint(grey16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(compressed_to_rgb(CompressedMsg('png', data)), grey3(expected))


@pytest.mark.parametrize('h, w', [(0, 4), (4, 0), (0, 0)])
def test_zero_size(h, w):
    assert 'zero size' in one_line_error(ImageMsg(h, w, 'rgb8', 0, w * 3, bytes(48)))


def test_step_too_small():
    text = one_line_error(ImageMsg(4, 4, 'rgb8', 0, 11, bytes(48)))
    assert '11' in text and '12' in text


def test_data_too_short_names_both_numbers():
    text = one_line_error(ImageMsg(4, 4, 'mono16', 0, 8, bytes(31)))
    assert '31' in text and '32' in text


def test_odd_width_yuv():
    one_line_error(ImageMsg(2, 3, 'uyvy', 0, 6, bytes(12)))


def test_list_data_out_of_range():
    one_line_error(ImageMsg(1, 1, 'mono8', 0, 1, [300]))


def test_not_an_image_message():
    one_line_error(object())
    one_line_error(ImageMsg('x', 2, 'rgb8', 0, 6, bytes(12)))


@pytest.mark.parametrize('fmt, data', [
    ('jpeg', b'\xff\xd8\xff' + bytes(64)),     # JPEG magic, garbage after
    ('png', b'not a png at all'),
    ('jpeg', b''),
])
def test_undecodable_compressed(fmt, data):
    one_line_error(CompressedMsg(fmt, data), compressed_to_rgb)


@pytest.mark.parametrize('fmt', ['h264', 'qoi', '16UC1; compressedDepth png'])
def test_unknown_compressed_format(fmt):
    text = one_line_error(CompressedMsg(fmt, png_bytes(rng_rgb(14))), compressed_to_rgb)
    assert repr(fmt) in text


def test_rgb_to_image_fields_rejects_bad_input():
    with pytest.raises(MessageError):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))
    with pytest.raises(MessageError):
        rgb_to_image_fields(rng_rgb(), 'nv21')
    with pytest.raises(MessageError):
        rgb_to_image_fields(rng_rgb(15, 4, 5), 'uyvy')
