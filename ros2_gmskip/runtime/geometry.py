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
Image geometry of the VLM families' processors, without torch or transformers.

`runtime.preprocess.Preprocessor` copies a fixed-size resize; real checkpoints resize otherwise.
Each rule here repeats transformers' PIL image processors step by step, in the same number
formats, so that the torch-free runtime gets bit-identical `pixel_values` (test_families.py
compares them with the Hugging Face processors):

- LLaVA-1.5 (CLIP): resize the shortest edge to S (the long edge to int(S * long / short)), then
  cut the centre (top = (H - h) // 2, left = (W - w) // 2);
- Qwen2-VL / Qwen2.5-VL: `smart_resize` to multiples of patch * merge within [min, max] pixels,
  then cut into temporal x spatial patches in the order the vision tower reads them.

Rescale and normalise are `Preprocessor`'s (one table lookup per uint8 value).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np
from PIL import Image

from ros2_gmskip.errors import ImageError
from ros2_gmskip.runtime.preprocess import check_image, Preprocessor, RESAMPLE


def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """Return (h, w) with the short edge `shortest` and the long one scaled and truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return the centre (height, width) of an (H, W, C) image; ImageError if it is smaller."""
    H, W = image.shape[:2]
    if H < height or W < width:
        raise ImageError(f'image of {H}x{W} is smaller than the {height}x{width} crop')
    top, left = (H - height) // 2, (W - width) // 2
    return image[top:top + height, left:left + width]


def pil_resize(image: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    """Resize an RGB uint8 (H, W, 3) image with PIL, as transformers' PIL backend does."""
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), resample=RESAMPLE[resample]))


@dataclass(frozen=True)
class ResizeCrop:
    """LLaVA-1.5's CLIP preprocessing: shortest-edge resize, centre crop, rescale, normalise."""

    shortest_edge: int
    crop: tuple[int, int]                   # (h, w) of pixel_values
    resample: str = 'bicubic'
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, ...] | None = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] | None = (0.26862954, 0.26130258, 0.27577711)

    @property
    def normalise(self) -> Preprocessor:
        """Return the rescale + normalise step (no resize: the crop has its size)."""
        return Preprocessor(size=self.crop, resample=self.resample,
                            rescale_factor=self.rescale_factor, image_mean=self.image_mean,
                            image_std=self.image_std)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return pixel_values float32 (1, 3, h, w) of an RGB uint8 (H, W, 3) image."""
        image = check_image(image)
        height, width = shortest_edge_size(*image.shape[:2], self.shortest_edge)
        image = pil_resize(image, height, width, self.resample)
        return self.normalise(center_crop(image, *self.crop))


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """Return Qwen's (h, w): multiples of `factor`, area in [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f'image of {height}x{width}: Qwen refuses aspect ratios above 200')
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class QwenPatches:
    """Qwen2-VL / Qwen2.5-VL: smart resize, normalise, cut into the vision tower's patches."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    resample: str = 'bicubic'
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, ...] | None = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] | None = (0.26862954, 0.26130258, 0.27577711)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """Return image_grid_thw (1, h / patch, w / patch) for a frame of this size."""
        h, w = smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels,
                            self.max_pixels)
        return 1, h // self.patch_size, w // self.patch_size

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (pixel_values (t*h*w, C*tp*p*p) float32, image_grid_thw (1, 3) int64)."""
        image = check_image(image)
        _, gh, gw = self.grid(*image.shape[:2])
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        image = pil_resize(image, gh * p, gw * p, self.resample)
        x = Preprocessor(size=image.shape[:2], resample=self.resample,
                         rescale_factor=self.rescale_factor, image_mean=self.image_mean,
                         image_std=self.image_std)(image)                   # (1, C, H, W)
        x = np.repeat(x, tp, axis=0)                                        # (tp, C, H, W)
        C = x.shape[1]
        x = x.reshape(1, tp, C, gh // m, m, p, gw // m, m, p)
        x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)        # (t, h/m, w/m, m, m, C, tp, p, p)
        patches = np.ascontiguousarray(x.reshape(gh * gw, C * tp * p * p), dtype=np.float32)
        return patches, np.array([[1, gh, gw]], dtype=np.int64)


def _get(obj, name: str):
    """Return obj[name] or obj.name (transformers' SizeDict and plain dicts alike), or None."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def from_image_processor(ip) -> Preprocessor | ResizeCrop | QwenPatches:
    """
    Return the torch-free copy of a transformers image processor's steps.

    Fixed-size resize (SigLIP, PaliGemma, Gemma 3 without pan-and-scan, the default model),
    shortest edge + centre crop (LLaVA-1.5's CLIP) and Qwen's smart resize + patches;
    ImageError naming the processor for the rest (Idefics3/SmolVLM tiles, OneVision anyres).
    """
    name = type(ip).__name__
    kind = name.removesuffix('Pil')
    resample = {int(v): k for k, v in RESAMPLE.items()}.get(int(_get(ip, 'resample') or 2))
    normalise = _get(ip, 'do_normalize') is not False
    common = {
        'resample': resample,
        'rescale_factor': (float(ip.rescale_factor) if _get(ip, 'do_rescale') is not False
                           else None),
        'image_mean': tuple(ip.image_mean) if normalise else None,
        'image_std': tuple(ip.image_std) if normalise else None}
    size = _get(ip, 'size')
    if kind.startswith('Qwen2VL') or kind.startswith('Qwen2_5_VL'):
        return QwenPatches(int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size),
                           int(_get(size, 'shortest_edge')), int(_get(size, 'longest_edge')),
                           **common)
    if kind.startswith(('Idefics3', 'SmolVLM', 'LlavaOnevision')) or _get(
            ip, 'do_pan_and_scan'):
        raise ImageError(f'{name}: torch-free preprocessing of its tiles is not implemented '
                         'yet (fixed-size, shortest-edge + crop and Qwen patches are)')
    if _get(size, 'shortest_edge') and not _get(size, 'longest_edge'):
        crop = _get(ip, 'crop_size')
        if not _get(ip, 'do_center_crop') or crop is None:
            raise ImageError(f'{name}: a shortest-edge resize without a centre crop gives a '
                             'size per frame; torch-free preprocessing needs a fixed size')
        return ResizeCrop(int(_get(size, 'shortest_edge')),
                          (int(_get(crop, 'height')), int(_get(crop, 'width'))), **common)
    if _get(size, 'height') and _get(size, 'width'):
        return Preprocessor(size=(int(_get(size, 'height')), int(_get(size, 'width'))),
                            **common)
    raise ImageError(f'{name}: size {dict(size) if isinstance(size, dict) else size!r} is '
                     'not a resize torch-free preprocessing knows')
