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
Idefics3 / SmolVLM vision graph: tiles -> SigLIP-style encoder -> pixel shuffle -> projection.

    pixel_values (tiles, 3, S, S) -> image_embeds (tiles, S*S / (p*p*r*r), C)

What `Idefics3Model.get_image_features` computes for one frame's tiles, minus what a fixed
camera makes constant: every tile is a full S x S crop (no padding images, no patch mask), so
the patch positions are the same for every tile. HF derives them with `torch.bucketize` over
the patch mask (not an ONNX op TensorRT parses); here they are computed once, at export, by the
same arithmetic, and the graph adds a constant table. The pixel shuffle is HF's with the grid
side and width as constants (HF reads them from the input's shape, which a trace leaves as a
dynamic axis).
The encoder, its post-norm and the projection are the model's own modules, so a pruned vision
stack exports as it is.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_positions(embeddings: nn.Module, height: int, width: int) -> torch.Tensor:
    """Return the position ids (n_patches,) HF gives a full, unpadded height x width tile."""
    side = embeddings.num_patches_per_side
    rows, cols = height // embeddings.patch_size, width // embeddings.patch_size
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    h = torch.clamp(torch.arange(rows, dtype=torch.float32) * (1.0 / torch.tensor([rows])),
                    max=1.0 - 1e-6)
    w = torch.clamp(torch.arange(cols, dtype=torch.float32) * (1.0 / torch.tensor([cols])),
                    max=1.0 - 1e-6)
    bh = torch.bucketize(h, boundaries, right=True)
    bw = torch.bucketize(w, boundaries, right=True)
    return (bh[:, None] * side + bw[None, :]).reshape(-1)


class Idefics3VisionForExport(nn.Module):
    """pixel_values (tiles, 3, S, S) -> image_embeds (tiles, n, C)."""

    def __init__(self, model: nn.Module, tile: tuple[int, int]) -> None:
        super().__init__()
        vision = model.model.vision_model
        self.patch_embedding = vision.embeddings.patch_embedding
        positions = vision.embeddings.position_embedding(
            patch_positions(vision.embeddings, *tile))
        self.register_buffer('positions', positions.detach().clone(), persistent=False)
        self.encoder = vision.encoder
        self.post_layernorm = vision.post_layernorm
        self.projection = model.model.connector.modality_projection
        self.scale = int(model.model.connector.scale_factor)
        self.side = tile[0] // vision.embeddings.patch_size
        self.width = int(vision.embeddings.embed_dim)
        if tile[0] != tile[1] or self.side % self.scale:
            raise ValueError(f'tiles of {tile} do not pixel-shuffle by {self.scale}')

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """Return Idefics3Connector.pixel_shuffle of (B, side * side, C) with a constant side."""
        s, r, C = self.side, self.scale, self.width
        x = x.reshape(-1, s, s // r, C * r).permute(0, 2, 1, 3)
        x = x.reshape(-1, s // r, s // r, C * r * r).permute(0, 2, 1, 3)
        return x.reshape(-1, (s // r) ** 2, C * r * r)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)   # (B, N, Cv)
        hidden = self.encoder(inputs_embeds=patches + self.positions[None],
                              attention_mask=None).last_hidden_state
        return self.projection(self.pixel_shuffle(self.post_layernorm(hidden)))  # (B, n, C)
