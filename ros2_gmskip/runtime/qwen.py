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
Run Qwen2-VL / Qwen2.5-VL bundles without torch: fixed-grid patches and M-RoPE positions.

A camera has a fixed resolution, so export fixes the patch grid (`Manifest.mrope`): the vision
graph takes that many patch rows and the prompt holds that many image tokens. What is left for
run time is cheap numpy:

- `GridPatches`: the HF processor's smart resize + patch cutting (`geometry.QwenPatches`,
  bit-identical to it), refusing a frame whose grid is not the exported one (a frame of another
  size may resize to the same grid: then it runs, exactly as the HF processor would take it);
- `prompt_positions`: transformers' `get_rope_index` for one prompt: text rows count up on all
  three rows (t, h, w); an image's rows sit at (start, start + row, start + column) of its merged
  grid; the text after it continues from start + max(rows, columns). The prompt length varies
  with the prompt, so this runs per request (numpy over the runs of text and image tokens);
- `extend_positions`: decode step k (after a prompt of T rows) sits at T + k + rope_delta on all
  three rows, rope_delta = max(prompt positions) + 1 - T (fixed by the grid: max(h, w) - h * w
  for merged rows h and columns w).
"""

from __future__ import annotations

from dataclasses import dataclass
import functools

import numpy as np
from ros2_gmskip.bundle_format import Manifest, MRope, Preprocess
from ros2_gmskip.errors import BundleError, EngineError, ImageError
from ros2_gmskip.runtime.geometry import QwenPatches


def check_token_skip(manifest: Manifest, token_skip, where: str) -> None:
    """Refuse FastV / KV removal on a Qwen bundle in one line (validated on LLaVA only)."""
    if manifest.mrope is not None and not token_skip.is_off:
        raise BundleError(f'{where}: token skipping ({token_skip.describe()}) is not supported '
                          f'for {manifest.decoder.family} bundles yet (FastV and KV removal are '
                          'validated against the LLaVA torch reference only): run without it')


def check_tensorrt(manifest: Manifest, where: str) -> None:
    """Refuse a Qwen bundle on the tensorrt backend in one line (its profiles are LLaVA's)."""
    if manifest.mrope is not None:
        raise EngineError(f'{where} is a {manifest.decoder.family} bundle (patch-row vision '
                          'input, three-row M-RoPE positions): the tensorrt backend does not '
                          'build profiles for it yet: use --backend onnxruntime')


@functools.lru_cache(maxsize=8)
def _grid(grid_thw: tuple[int, int, int], merge: int) -> np.ndarray:
    """Return an image's token positions (3, t * h * w / merge^2) from 0 (the grid is fixed)."""
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    T, H, W = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing='ij')
    grid = np.stack([T.ravel(), H.ravel(), W.ravel()]).astype(np.int64)
    grid.flags.writeable = False
    return grid


def mrope_grid_positions(start: int, grid_thw: tuple[int, int, int], merge: int) -> np.ndarray:
    """Return the (3, t * h * w / merge^2) positions of one image's tokens from `start`."""
    return _grid(tuple(int(v) for v in grid_thw), int(merge)) + start


def prompt_positions(ids: np.ndarray, image_token_id: int, grid_thw: tuple[int, int, int],
                     merge: int) -> np.ndarray:
    """
    Return the M-RoPE positions (3, T) of a prompt whose images all have `grid_thw`.

    Every `n` consecutive image tokens are one image (transformers' get_rope_index with one grid
    per image); text rows continue from the largest position so far plus one.
    """
    is_image = np.asarray(ids) == image_token_id
    n = grid_thw[0] * grid_thw[1] * grid_thw[2] // merge ** 2
    bounds = [0, *(np.flatnonzero(np.diff(is_image.view(np.int8))) + 1), len(is_image)]
    out = np.empty((3, len(is_image)), dtype=np.int64)
    current = 0
    for start, stop in zip(bounds, bounds[1:]):            # runs of text, runs of images
        if not is_image[start]:
            out[:, start:stop] = np.arange(current, current + stop - start)
            current += stop - start
            continue
        if (stop - start) % n:
            raise ImageError(f'the prompt has a run of {stop - start} image tokens, not a '
                             f'multiple of the {n} of the exported grid: re-export the bundle')
        for first in range(start, stop, n):
            out[:, first:first + n] = mrope_grid_positions(current, grid_thw, merge)
            current += max(grid_thw[1], grid_thw[2]) // merge
    return out


def extend_positions(positions: np.ndarray, length: int) -> np.ndarray:
    """Return (3, length): the prompt's (3, T), then T + k + rope_delta on every row."""
    T = positions.shape[1]
    delta = int(positions.max()) + 1 - T if T else 0
    out = np.empty((3, max(length, T)), dtype=np.int64)
    out[:, :T] = positions
    out[:, T:] = np.arange(T, out.shape[1]) + delta
    return out


@dataclass(frozen=True)
class GridPatches:
    """A camera frame -> the vision graph's patch rows, for the grid fixed at export."""

    patches: QwenPatches
    grid_thw: tuple[int, int, int]
    camera_size: tuple[int, int]

    @classmethod
    def from_manifest(cls, pre: Preprocess, mrope: MRope) -> GridPatches:
        """Return the preprocessing a Qwen bundle's `preprocess` and `mrope` describe."""
        patches = QwenPatches(mrope.patch_size, mrope.merge_size, mrope.temporal_patch_size,
                              mrope.min_pixels, mrope.max_pixels, resample=pre.resample,
                              rescale_factor=pre.rescale_factor, image_mean=pre.image_mean,
                              image_std=pre.image_std)
        return cls(patches, tuple(mrope.grid_thw), tuple(mrope.camera_size))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return pixel_values (t*h*w, C*tp*p*p) of an RGB frame; ImageError for another grid."""
        grid = self.patches.grid(*image.shape[:2]) if getattr(image, 'ndim', 0) == 3 else None
        if grid is not None and tuple(grid) != self.grid_thw:
            H, W = self.camera_size
            raise ImageError(f'image of {image.shape[0]}x{image.shape[1]} gives the Qwen patch '
                             f'grid {list(grid)}, the bundle was exported for {H}x{W} frames '
                             f'(grid {list(self.grid_thw)}): re-export it with --camera-size '
                             f'{image.shape[0]}x{image.shape[1]}')
        return self.patches(image)[0]
