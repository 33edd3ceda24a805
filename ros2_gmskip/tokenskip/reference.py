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
Torch reference for token skipping: batched greedy texts with FastV and visual KV removal.

    texts = token_skip_texts(model, processor, images, TokenSkip(FastVConfig(2, 0.5), 1.0))

What export validation compares the ONNX runtime (runtime/decode.py) against, and what
evaluation and calibration can decode with when token skipping is on. With `TokenSkip()` (nothing
skipped) it is the functional decoder without pruning, which equals transformers `generate`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.tokenskip.fastv import pad_token_id, stop_ids
from ros2_gmskip.tokenskip.kv_removal import kv_removal_generate_ids, KVRemovalConfig
from ros2_gmskip.tokenskip.settings import TokenSkip
from ros2_gmskip.vlm.prompting import build_inputs
import torch
from torch import nn


def kv_config(ts: TokenSkip) -> KVRemovalConfig:
    """Return the torch KV-removal config of a TokenSkip (stride rule, as the runtime applies)."""
    return KVRemovalConfig(ratio=ts.kv_ratio, start_layer=ts.kv_start)


@torch.no_grad()
def token_skip_ids(model: nn.Module, processor, inputs, ts: TokenSkip, max_new_tokens: int
                   ) -> torch.Tensor:
    """Greedy new-token ids (B, N) for processor outputs, FastV + KV removal as `ts` says."""
    fastv = ts.fastv if ts.fastv is not None and ts.fastv.r > 0 else None
    tokens, _ = kv_removal_generate_ids(model, inputs, kv_config(ts), max_new_tokens,
                                        stop_ids(model, processor), pad_token_id(processor),
                                        fastv=fastv)
    return tokens


@torch.no_grad()
def token_skip_texts(model: nn.Module, processor, images: Sequence[np.ndarray], ts: TokenSkip,
                     prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 48,
                     batch_size: int = 16) -> list[str]:
    """Greedy descriptions of RGB uint8 images with token skipping, in order."""
    texts: list[str] = []
    for start in range(0, len(images), batch_size):
        inputs = build_inputs(processor, images[start:start + batch_size], prompt)
        tokens = token_skip_ids(model, processor, inputs.to(model.device), ts, max_new_tokens)
        texts += [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts
