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
Export the Qwen2-VL / Qwen2.5-VL vision side for one camera resolution.

The Qwen processors resize each frame to a size that depends on the frame (`smart_resize`), and
the vision tower's rotary positions, Qwen2.5-VL's attention windows (`window_index`,
`cu_window_seqlens`), its per-image attention (`cu_seqlens`) and the number of image tokens all
follow from the resulting patch grid. A camera has one resolution, so export fixes the grid:

    layout = qwen_layout(model, processor, camera_size=(480, 640), prompt_text=prompt_text)
    layout.mrope.grid_thw                  # (1, 6, 8) for the tiny checkpoints
    QwenVisionForExport(model, layout.mrope.grid_thw)   # pixel rows (48, 96) -> (1, 12, C)

Tracing with the grid as a constant turns every grid-dependent index (rotary positions, window
order and its inverse, attention splits) into graph constants: the vision graph is plain ONNX ops
(Conv, MatMul, Softmax, Gather, ...; the TensorRT parser lint passes) over a fixed number of
patch rows. The runtime refuses a frame whose grid differs (runtime/qwen.py), in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ros2_gmskip.bundle_format import MRope, Preprocess
from ros2_gmskip.errors import ModelLoadError
from ros2_gmskip.runtime import qwen
from ros2_gmskip.runtime.geometry import from_image_processor, pil_resize, QwenPatches
from ros2_gmskip.vlm.mrope import mrope_section
import torch
from torch import nn


class QwenVisionForExport(nn.Module):
    """Patch rows (N, C*tp*p*p) -> image_embeds (1, n, C) for the grid fixed at export."""

    def __init__(self, model: nn.Module, grid_thw: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = model.model
        self.register_buffer('grid_thw', torch.tensor([list(grid_thw)]), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values, image_grid_thw=self.grid_thw,
                                            return_dict=True)
        return out.pooler_output[0][None]                                  # (1, n, C)


@dataclass(frozen=True)
class QwenLayout:
    """What export fixes for one camera resolution."""

    preprocess: Preprocess               # the manifest's `preprocess` (size: the resized frame)
    mrope: MRope                         # the manifest's `mrope`
    num_image_tokens: int
    pixel_shape: tuple[int, int]         # the vision graph's input (patch rows, values per row)


def _windows(model: nn.Module, grid_thw: tuple[int, int, int]) -> int | None:
    """Return Qwen2.5-VL's attention windows per image (None: Qwen2-VL has none)."""
    visual = model.model.visual
    if not hasattr(visual, 'window_size'):
        return None
    from transformers.vision_utils import get_vision_window_index
    _, cu = get_vision_window_index(torch.tensor([list(grid_thw)]),
                                    spatial_merge_size=visual.spatial_merge_size,
                                    window_size=visual.window_size,
                                    patch_size=visual.patch_size)
    return int(len(torch.unique_consecutive(torch.as_tensor(cu))) - 1)


def qwen_layout(model: nn.Module, processor, camera_size: tuple[int, int],
                prompt_text) -> QwenLayout:
    """
    Return the preprocessing, patch grid, positions and token count of `camera_size` frames.

    The torch-free grid (runtime/geometry.py) is checked against what the HF processor makes of
    such a frame, and the image token count against the prompt it builds; ModelLoadError if
    they differ.
    """
    H, W = (int(v) for v in camera_size)
    patches = from_image_processor(processor.image_processor)
    if not isinstance(patches, QwenPatches):
        raise ModelLoadError(f'{type(processor.image_processor).__name__} is not a Qwen image '
                             'processor (smart resize + patches)')
    grid = patches.grid(H, W)
    frame = np.zeros((H, W, 3), dtype=np.uint8)
    inputs = processor(images=[frame], text=[prompt_text(processor)], return_tensors='np')
    hf_grid = tuple(int(v) for v in inputs['image_grid_thw'][0])
    if hf_grid != grid:
        raise ModelLoadError(f'the processor cuts a {H}x{W} frame into the grid {list(hf_grid)}, '
                             f'the torch-free preprocessing into {list(grid)}')
    m = patches.merge_size
    n = grid[0] * grid[1] * grid[2] // m ** 2
    ids = inputs['input_ids'][0]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    if int((ids == image_token_id).sum()) != n:
        raise ModelLoadError(f'the processor puts {int((ids == image_token_id).sum())} image '
                             f'tokens in the prompt, the grid {list(grid)} makes {n}')
    positions = qwen.prompt_positions(ids, image_token_id, grid, m)
    section = mrope_section(model.model.language_model.rotary_emb)
    if section is None:
        raise ModelLoadError(f'{type(model).__name__} has no mrope_section in its rotary '
                             'embedding')
    rows = grid[0] * grid[1] * grid[2]
    per_row = 3 * patches.temporal_patch_size * patches.patch_size ** 2
    preprocess = Preprocess(size=(grid[1] * patches.patch_size, grid[2] * patches.patch_size),
                            resample=patches.resample, rescale_factor=patches.rescale_factor,
                            image_mean=patches.image_mean, image_std=patches.image_std)
    mrope = MRope(camera_size=(H, W), grid_thw=grid, patch_size=patches.patch_size,
                  merge_size=m, temporal_patch_size=patches.temporal_patch_size,
                  min_pixels=patches.min_pixels, max_pixels=patches.max_pixels,
                  mrope_section=section,
                  rope_delta=int(positions.max()) + 1 - len(ids),
                  windows=_windows(model, grid))
    return QwenLayout(preprocess=preprocess, mrope=mrope, num_image_tokens=n,
                      pixel_shape=(rows, per_row))


def camera_frames(images: list[np.ndarray], camera_size: tuple[int, int],
                  resample: str = 'bicubic') -> list[np.ndarray]:
    """Return `images` at the camera's size (validation scenes as that camera would see them)."""
    H, W = camera_size
    return [pil_resize(image, H, W, resample) for image in images]
