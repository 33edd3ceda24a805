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
Compute Qwen2-VL's multimodal RoPE (M-RoPE) for the block spec (vlm/llama_block.py).

A Qwen2-VL decoder block is a Qwen2 block; only its rotation differs. Each token has three
positions (time, height, width: equal for text, the grid cell for image tokens), and the rotary
frequencies are split into `mrope_section` parts (t, h, w, then t, h, w again ...) that rotate by
the matching position. What comes out is the same (B, T, d) cos / sin pair `llama_block.rope`
gives, so `block_forward` runs unchanged. The operation order is transformers'
(`Qwen2VLRotaryEmbedding`: cos / sin of every row first, then the sections picked), so the values
are bit-identical to the Hugging Face model.
"""

from __future__ import annotations

import torch
from torch import nn


def mrope_section(rotary: nn.Module) -> tuple[int, ...] | None:
    """Return a rotary module's M-RoPE sections, or None for plain RoPE."""
    section = getattr(rotary, 'mrope_section', None)
    return tuple(int(s) for s in section) if section else None


def _pick(freq: torch.Tensor, section: tuple[int, ...]) -> torch.Tensor:
    """(3, B, T, d/2) -> (B, T, d): section i from row i % 3, then repeated for rotate_half."""
    parts = freq.split(list(section), dim=-1)
    picked = torch.cat([part[i % 3] for i, part in enumerate(parts)], dim=-1)      # (B, T, d/2)
    return torch.cat((picked, picked), dim=-1)


def mrope(inv_freq: torch.Tensor, scaling: float, positions: torch.Tensor,
          section: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return cos and sin (B, T, d) at M-RoPE `positions` (3, B, T)."""
    freqs = positions[..., None].float() * inv_freq                     # (3, B, T, d/2)
    return _pick(freqs.cos() * scaling, section), _pick(freqs.sin() * scaling, section)
