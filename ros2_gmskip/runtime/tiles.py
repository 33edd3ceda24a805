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
Idefics3 / SmolVLM image splitting and its prompt layout, without torch or transformers.

Repeats transformers' `Idefics3ImageProcessorPil` (SmolVLM's is the same code) step by step on
uint8 pixels, so the torch-free runtime gets bit-identical `pixel_values` (test_fams.py compares):

    resize the long edge to `longest_edge` (the short one int(), rounded up to even)
    resize both edges up to multiples of the tile (the short one from int(long / aspect))
    cut rows x cols tiles, row by row, then the whole resized image down to one tile (global)
    rescale + normalise each (runtime.preprocess.Preprocessor's table)

A camera has one resolution, so the grid, the tile count and the prompt are fixed at export
(`bundle_format.Tiles`); a frame whose grid differs is refused in one line. The prompt puts,
per tile, `<fake_token_around_image><row_i_col_j>` + the tile's image tokens, a newline after
each row, then a newline, `<fake_token_around_image><global-img>`, tokens, the fake token
(`image_prompt`, the processor's `replace_image_token`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
import math

import numpy as np
from ros2_gmskip.errors import ImageError
from ros2_gmskip.runtime.geometry import pil_resize
from ros2_gmskip.runtime.preprocess import check_image, Preprocessor

MAX_IMAGE_SIZE = 4096        # transformers' cap on either edge after the first resize


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """Return (h, w) with the long edge `longest`, the short one truncated and made even."""
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height                          # the cap (a no-op below 4096)
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """Return (h, w) both rounded up to multiples of `tile`, as resize_for_vision_encoder does."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


def image_prompt(rows: int, cols: int, seq_len: int, image_token: str = '<image>',
                 fake_token: str = '<fake_token_around_image>',
                 global_token: str = '<global-img>') -> str:
    """Return the text the processor puts in place of one image token."""
    tokens = image_token * seq_len
    glob = f'{fake_token}{global_token}{tokens}{fake_token}'
    if rows == 0 and cols == 0:
        return glob
    text = ''.join(''.join(f'{fake_token}<row_{r + 1}_col_{c + 1}>{tokens}' for c in range(cols))
                   + '\n' for r in range(rows))
    return f'{text}\n{glob}'


@dataclass(frozen=True)
class TilePreprocessor:
    """Idefics3 / SmolVLM: frame -> pixel_values (rows * cols + 1, 3, tile, tile)."""

    tile: int                                # max_image_size longest_edge: a tile's side
    longest_edge: int                        # size longest_edge: the first resize
    split: bool = True                       # do_image_splitting
    grid: tuple[int, int] | None = None      # the grid fixed at export (None: any)
    camera: tuple[int, int] | None = None    # the frame size it was fixed for (messages)
    resample: str = 'lanczos'
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, ...] | None = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] | None = (0.5, 0.5, 0.5)

    @property
    def size(self) -> tuple[int, int]:
        """Return one tile's (H, W): what the vision graph takes."""
        return self.tile, self.tile

    @cached_property
    def normalise(self) -> Preprocessor:
        """Return the rescale + normalise step of one tile."""
        return Preprocessor(size=self.size, resample=self.resample,
                            rescale_factor=self.rescale_factor, image_mean=self.image_mean,
                            image_std=self.image_std)

    def grid_of(self, height: int, width: int) -> tuple[int, int]:
        """Return the (rows, cols) of tiles a frame of this size is cut into ((0, 0): none)."""
        if not self.split:
            return 0, 0
        h, w = tile_multiple_size(*longest_edge_size(height, width, self.longest_edge),
                                  self.tile)
        if h > self.tile or w > self.tile:
            return (h - self.tile) // self.tile + 1, (w - self.tile) // self.tile + 1
        return 0, 0

    def frames(self, image: np.ndarray) -> tuple[list[np.ndarray], tuple[int, int]]:
        """Return the uint8 tiles then the global image, and the grid."""
        image = check_image(image)
        image = pil_resize(image, *longest_edge_size(*image.shape[:2], self.longest_edge),
                           self.resample)
        t = self.tile
        if not self.split:
            return [pil_resize(image, t, t, self.resample)], (0, 0)
        image = pil_resize(image, *tile_multiple_size(*image.shape[:2], t), self.resample)
        H, W = image.shape[:2]
        if H <= t and W <= t:
            return [image], (0, 0)
        rows, cols = (H - t) // t + 1, (W - t) // t + 1
        tiles = [image[r * t:(r + 1) * t, c * t:(c + 1) * t]
                 for r in range(rows) for c in range(cols)]
        return tiles + [pil_resize(image, t, t, self.resample)], (rows, cols)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return pixel_values float32 (tiles + 1, 3, tile, tile) of an RGB uint8 frame."""
        frames, grid = self.frames(image)
        if self.grid is not None and tuple(grid) != tuple(self.grid):
            camera = 'x'.join(str(v) for v in self.camera) if self.camera else '?'
            raise ImageError(f'frame of {image.shape[0]}x{image.shape[1]} is cut into '
                             f'{grid[0]}x{grid[1]} tiles, the bundle was exported for '
                             f'{self.grid[0]}x{self.grid[1]} (camera {camera}): send frames of '
                             'that size or re-export with --camera-size')
        normalise = self.normalise
        return np.concatenate([normalise(np.ascontiguousarray(f)) for f in frames])
