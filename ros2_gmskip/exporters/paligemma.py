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
PaliGemma's differences from LLaVA in export: its vision graph and its prompt.

- vision: SigLIP's last hidden state through the projector (`get_image_features`), no layer
  selection and no CLS token;
- prompt: the processor writes the image tokens, then BOS, the prompt and a newline
  (`PaliGemmaProcessor.prepare_inputs_layout`); no chat template;
- the decoder (Gemma: RMSNorm 1 + w, GeGLU, the embedding scale) runs through the same block
  spec; what differs there is handled where it happens: the prefix attends bidirectionally
  during the prefill and positions count from 1 (onnx_export.DecoderForExport, from the family
  record), and the embedding scale is in the saved table (onnx_export.embedding_table).
"""

from __future__ import annotations

import torch
from torch import nn


class PaliGemmaVisionForExport(nn.Module):
    """pixel_values (B, 3, H, W) -> image_embeds (B, n, C): SigLIP tower and projector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values).last_hidden_state)


def image_text(processor, num_image_tokens: int) -> str:
    """Return what replaces the prompt's image token: the image tokens, then BOS."""
    return processor.image_token * num_image_tokens + processor.tokenizer.bos_token
