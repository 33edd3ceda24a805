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
Skip-Vision KV-cache removal (arXiv 2503.21817): visual keys/values dropped after prefill.

After prefill the visual tokens' key/value entries are dropped, so every decode step attends to
fewer keys.

    cfg = KVRemovalConfig(ratio=1.0, start_layer=0)          # all visual KV, every layer
    texts = kv_removal_generate(model, processor, images, 'describe the scene.', cfg)

The prefill is the ordinary one (every token sees every earlier token, so the text tokens have
already read the image); only the decode steps lose the visual keys. Optionally the prefill can
itself be a FastV prefill (the removal then applies to whatever visual entries each layer still
holds) or run with Skip-FFN on the tokens that are about to be dropped, which is Skip-Vision's
inference recipe for a model trained with Skip-FFN.

Positions stay right without any bookkeeping: cached keys were rotated (RoPE) at their own
positions before they were stored, and a new token's position is its absolute position in the
full sequence (prompt length + step, counting removed tokens), so removing entries never shifts
anything. What changes is the cache length and its mask, per layer: `plan_kv_removal` maps each
cache slot to its original token (FastV's kept_index), picks the slots to keep and gathers their
padding mask; `remove_visual_kv` gathers the key/value tensors.

Rows of a batch may lose different numbers of entries (FastV keeps different image tokens per
image): a layer then keeps as many slots as its fullest row needs and the surplus slots of the
other rows are masked out (their mask is 0), so results never depend on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.tokenskip.fastv import (
    embed_inputs,
    fastv_prefill,
    FastVConfig,
    greedy_decode,
    layer_masks,
    pad_token_id,
    Past,
    stop_ids,
)
from ros2_gmskip.tokenskip.skip_ffn import select_skipped, Selection, skip_ffn
from ros2_gmskip.vlm.prompting import build_inputs
import torch
from torch import nn


@dataclass(frozen=True)
class KVRemovalConfig:
    """Which visual KV entries go after prefill."""

    ratio: float = 1.0                     # share of the visual tokens dropped (1 = all of them)
    mode: Selection = Selection.STRIDE     # which ones when ratio < 1 (see skip_ffn.py)
    start_layer: int = 0                   # layers < start_layer keep their visual entries
    skip_ffn_prefill: bool = False         # the dropped tokens also skip the FFN in the prefill
    seed: int = 0                          # Selection.RANDOM only

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f'KV removal ratio must be in [0, 1], got {self.ratio}')
        if self.start_layer < 0:
            raise ValueError(f'start_layer must be >= 0, got {self.start_layer}')


def drop_mask_for(image_mask: torch.Tensor, cfg: KVRemovalConfig) -> torch.Tensor:
    """Return (B, T) bool: the visual tokens whose KV entries are dropped (Skip-FFN's rule)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    return select_skipped(image_mask, cfg.ratio, cfg.mode, generator)


def plan_kv_removal(cache_index: list[torch.Tensor], masks: list[torch.Tensor],
                    drop_mask: torch.Tensor, start_layer: int = 0
                    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """
    Slots to keep per layer, and the layers' new masks.

    cache_index[l] (B, S_l): original sequence index of each cache slot (fastv_prefill's
    kept_index); masks[l] (B, S_l): 1 = attend; drop_mask (B, T) over the original sequence.
    Returns keep[l] (B, S'_l) slot indices in their original order (None: layer untouched) and
    masks[l] (B, S'_l).
    """
    keep_index: list[torch.Tensor | None] = []
    new_masks: list[torch.Tensor] = []
    for layer, (index, mask) in enumerate(zip(cache_index, masks)):
        dropped = drop_mask.gather(1, index)                               # (B, S_l) per slot
        if layer < start_layer or not bool(dropped.any()):
            keep_index.append(None)
            new_masks.append(mask)
            continue
        n = int((~dropped).sum(dim=1).max())                               # fullest row
        keep = torch.argsort(dropped.to(torch.int8), dim=1, stable=True)[:, :n]   # (B, S'_l)
        keep_index.append(keep)
        new_masks.append(mask.gather(1, keep) * (~dropped).gather(1, keep).to(mask.dtype))
    return keep_index, new_masks


def remove_visual_kv(past: Past, keep_index_per_layer: Sequence[torch.Tensor | None]) -> Past:
    """Reduce each layer's key/value (B, KV, S_l, d) to slots keep[l] (B, S'_l); None keeps all."""
    out: Past = []
    for (k, v), keep in zip(past, keep_index_per_layer):
        if keep is None:
            out.append((k, v))
            continue
        B, KV, _, d = k.shape
        index = keep[:, None, :, None].expand(B, KV, keep.shape[1], d)      # (B, KV, S'_l, d)
        out.append((k.gather(2, index), v.gather(2, index)))
    return out


@torch.no_grad()
def kv_removal_generate_ids(model: nn.Module, inputs, cfg: KVRemovalConfig, max_new_tokens: int,
                            stop: Sequence[int], pad_id: int, fastv: FastVConfig | None = None,
                            keep_logits: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy token ids (B, N) with the visual KV entries removed after prefill."""
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    logits, past, masks = prefill_and_remove(model, embeds, mask, positions, image_mask, cfg,
                                             fastv)
    return greedy_decode(model, logits, past, masks, positions[:, -1] + 1, max_new_tokens, stop,
                         pad_id, keep_logits)


def prefill_and_remove(model: nn.Module, embeds: torch.Tensor, mask: torch.Tensor,
                       positions: torch.Tensor, image_mask: torch.Tensor, cfg: KVRemovalConfig,
                       fastv: FastVConfig | None = None) -> tuple[torch.Tensor, Past, list]:
    """
    Run the prefill, then `cfg`'s visual KV removal: what `greedy_decode` continues from.

    The prefill (FastV's, or Skip-FFN's with `cfg.skip_ffn_prefill`) runs on `embed_inputs`'
    outputs. -> (last logits, cache, per-layer attention masks).
    """
    drop = drop_mask_for(image_mask, cfg)                                  # (B, T)
    if cfg.skip_ffn_prefill:
        if fastv is not None and fastv.r > 0:
            raise ValueError('skip_ffn_prefill cannot be combined with FastV pruning yet')
        with skip_ffn(model, drop):
            logits, past, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask,
                                                     None)
    else:
        logits, past, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, fastv)
    keep, masks = plan_kv_removal(kept_index, layer_masks(mask, kept_index), drop,
                                  cfg.start_layer)
    return logits, remove_visual_kv(past, keep), masks


@torch.no_grad()
def kv_removal_generate(model: nn.Module, processor, images: Sequence[np.ndarray],
                        prompt: str = DEFAULT_PROMPT, cfg: KVRemovalConfig = KVRemovalConfig(),
                        max_new_tokens: int = 48, fastv: FastVConfig | None = None) -> list[str]:
    """Greedy descriptions of RGB uint8 images, visual KV entries dropped after prefill."""
    inputs = build_inputs(processor, images, prompt).to(model.device)
    tokens, _ = kv_removal_generate_ids(model, inputs, cfg, max_new_tokens,
                                        stop_ids(model, processor), pad_token_id(processor),
                                        fastv=fastv)
    return [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
