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
Skip-FFN (Skip-Vision, arXiv 2503.21817): a share of the visual tokens bypasses the FFN.

The skipped tokens bypass the FFN of the decoder blocks while still taking part in attention.

    image_mask = input_ids == model.config.image_token_id                     # (B, T)
    skip = select_skipped(image_mask, ratio=0.5)                               # (B, T) bool
    with skip_ffn(model, skip) as mlps:                                        # FFNs wrapped
        loss = model(input_ids=..., pixel_values=..., labels=...).loss
    loss.backward()                                                            # outside is fine
    mlps[0].rows                                                               # rows computed

Skip-Vision observes that the FFN barely changes visual tokens, so during training most of them
skip it: a skipped token is still a query and a key/value in every attention layer (text tokens
keep reading it), but its FFN output is zero, so the residual carries it through the block
unchanged. The wrapper computes the MLP only on the rows that are not skipped (gather -> mlp ->
scatter), so the saved FLOPs are real, and it counts the rows it computed so a test can prove the
skipped tokens never reached the MLP.

Which visual tokens skip: a fixed stride (default)
--------------------------------------------------
In Skip-Vision the tokens that skip the FFN in training are the ones whose KV entries the model
drops after prefill at inference (kv_removal.py). The inference side needs a rule that does not
depend on the batch, and training should use that same rule, so the model learns exactly the
split it will run with: the retained tokens carry the image into the text, the skipped ones serve
as attention context during prefill only. The paper's retained set is a structural, content-
independent compression of the image (not a learnt or random choice); our equivalent is a fixed
stride over the image-token grid, which keeps ceil((1-ratio) * n) evenly spaced tokens, every part
of the image represented. `Selection.RANDOM` (a new seeded subset per batch and row) is there for
ablations: it regularises like token dropout but trains a split that inference cannot reproduce.
(Our reading of the paper; its token-merging front end is not reproduced here.)

The wrappers live only inside the `with` block: the model's modules and state-dict keys are the
original ones outside it, so `save_pretrained` and the optimizer see an ordinary model.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Iterable, Iterator

from ros2_gmskip.tokenskip import settings
from ros2_gmskip.tokenskip.flops import num_kept
from ros2_gmskip.vlm.blocks import decoder_stack
import torch
from torch import nn


class Selection(str, Enum):
    """How the skipped visual tokens are chosen."""

    STRIDE = 'stride'      # fixed, evenly spaced retained tokens (train == inference)
    RANDOM = 'random'      # a fresh seeded subset per batch and row (ablation)


def retained_slots(n: int, ratio: float) -> torch.Tensor:
    """
    Return the image-token slots (0..n-1) that do NOT skip under the stride rule.

    settings.py defines it: ceil((1-ratio) n) evenly spaced, starting at slot 0; n = 64, ratio =
    0.75 -> 0, 4, ..., 60.
    """
    return torch.tensor(settings.retained_slots(n, ratio), dtype=torch.long)


def select_skipped(image_mask: torch.Tensor, ratio: float,
                   mode: Selection | str = Selection.STRIDE,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """
    (B, T) bool: the visual tokens that skip, n - ceil((1-ratio) * n) per row of n image tokens.

    image_mask (B, T) bool; every row must hold the same number of image tokens. `generator`
    (RANDOM only) makes the subsets reproducible.
    """
    mode = Selection(mode)
    B, T = image_mask.shape
    counts = image_mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f'every row needs the same number of image tokens, got {counts.tolist()}')
    n = int(counts[0])
    positions = image_mask.nonzero()[:, 1].view(B, n)                      # (B, n)
    n_keep = num_kept(n, ratio)
    if mode is Selection.STRIDE:
        keep = retained_slots(n, ratio).to(image_mask.device)[None].expand(B, n_keep)
    else:
        keep = torch.stack([torch.randperm(n, generator=generator)[:n_keep] for _ in range(B)])
        keep = keep.to(image_mask.device)                                  # (B, n_keep)
    skip = image_mask.clone()
    skip.scatter_(1, positions.gather(1, keep), False)
    return skip


class SkipFFN(nn.Module):
    """An MLP that computes only the rows of `compute` (B, T) bool; the other rows get output 0."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp
        self.compute: torch.Tensor | None = None   # None: every row (a plain MLP)
        self.rows = 0                              # rows passed through `mlp` so far
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        self.calls += 1
        if self.compute is None or bool(self.compute.all()):
            self.rows += B * T
            return self.mlp(x)
        if self.compute.shape != (B, T):
            raise ValueError(f'skip mask is {tuple(self.compute.shape)} but the MLP input has '
                             f'{B} x {T} tokens')
        flat = x.reshape(B * T, C)
        rows = self.compute.reshape(-1).nonzero().squeeze(1)               # (R,)
        y = self.mlp(flat.index_select(0, rows))                           # (R, C) gather -> mlp
        self.rows += rows.numel()
        out = torch.zeros_like(flat).index_copy(0, rows, y.to(flat.dtype))  # scatter, 0 elsewhere
        return out.view(B, T, C)


@contextlib.contextmanager
def skip_ffn(model: nn.Module, skip_mask: torch.Tensor,
             layers: Iterable[int] | None = None) -> Iterator[list[SkipFFN]]:
    """
    Make the MLPs of the decoder blocks in `layers` (default all) skip rows, inside the block.

    They skip the tokens where `skip_mask` (B, T) is True. Yields the wrappers (their `.rows`
    counters), in layer order.
    """
    blocks = decoder_stack(model).layers
    chosen = range(len(blocks)) if layers is None else sorted({int(i) for i in layers})
    wrappers: list[SkipFFN] = []
    originals: dict[int, nn.Module] = {}
    try:
        for i in chosen:
            originals[i] = blocks[i].mlp
            wrapper = SkipFFN(blocks[i].mlp)
            wrapper.compute = ~skip_mask.bool()
            blocks[i].mlp = wrapper
            wrappers.append(wrapper)
        yield wrappers
    finally:
        for i, mlp in originals.items():
            blocks[i].mlp = mlp
