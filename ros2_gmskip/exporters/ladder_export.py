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
Lay a plan ladder out on decoder segments: one bundle that runs every rung (`export --ladder`).

The bundle holds the least-pruned rung's decoder (the deepest rung: its blocks removed at
export), split wherever the nested rungs differ, so every segment is a run of blocks that each
rung keeps whole or skips whole; a rung is the list of segments it runs. A skipped block is the
identity on the residual stream, so the segment after a skipped one reads the stream as it is,
and each segment keeps its own cache. No segment ends in logits: the final norm and lm_head are
`head.npz`, applied (numpy) after whichever segment ends the rung, so no weight is held twice.

Token skipping counts a rung's own blocks: FastV's K is after the rung's K-th kept block, KV
removal starts at its s-th; both become splits (FastV's a ranking split) for every rung.

    layout = ladder_layout(rung_blocks, num_blocks=16, token_skip=ts)
    layout.base, layout.splits, layout.ranks_at, layout.rung_segments
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ros2_gmskip.errors import BundleError
from ros2_gmskip.tokenskip.settings import TokenSkip


@dataclass(frozen=True)
class LadderLayout:
    """Where a ladder bundle's decoder splits, in the bundle's (least-pruned) block numbers."""

    base: tuple[int, ...]                   # full-model blocks every rung removes (exported out)
    kept: tuple[int, ...]                   # bundle block j is full-model block kept[j]
    splits: tuple[int, ...]                 # segment boundaries in 1..len(kept)-1
    ranks_at: tuple[int, ...]               # boundaries that end a rung's FastV K
    rung_segments: tuple[tuple[int, ...], ...]   # per rung: the segment indices it runs

    def bundle_blocks(self, removed: Sequence[int]) -> list[int]:
        """Return the bundle block indices of full-model blocks `removed` (beyond the base)."""
        drop = set(removed)
        return [j for j, b in enumerate(self.kept) if b in drop]


def ladder_layout(rungs: Sequence[Sequence[int]], num_blocks: int,
                  token_skip: TokenSkip = TokenSkip()) -> LadderLayout:
    """
    Return the segments a ladder bundle needs for `rungs` (removed blocks, fastest first).

    The rungs must be nested (runtime.ladder.Ladder checks it). BundleError, one line, when a
    rung keeps too few blocks for the token settings.
    """
    base = tuple(sorted(rungs[-1]))
    kept = tuple(b for b in range(num_blocks) if b not in set(base))
    L = len(kept)
    splits: set[int] = set()
    ranks: set[int] = set()
    own_blocks = []
    for i, removed in enumerate(rungs):
        drop = set(removed)
        for j in range(1, L):                       # where this rung starts or stops skipping
            if (kept[j - 1] in drop) != (kept[j] in drop):
                splits.add(j)
        own = [j for j in range(L) if kept[j] not in drop]      # bundle blocks it runs
        own_blocks.append(own)
        fastv = token_skip.fastv
        if fastv is not None and fastv.r > 0 and fastv.k >= len(own):
            raise BundleError(f'rung {i} keeps {len(own)} decoder blocks: FastV K={fastv.k} '
                              'needs more; choose a smaller K or a ladder without that rung')
        if token_skip.kv_ratio and token_skip.kv_start >= len(own):
            raise BundleError(f'rung {i} keeps {len(own)} decoder blocks: KV removal from layer '
                              f'{token_skip.kv_start} is past its last one')
        points, rank_at = token_skip.splits(len(own))
        splits.update(own[p - 1] + 1 for p in points)   # after the rung's p-th block
        if rank_at is not None:
            ranks.add(own[rank_at - 1] + 1)
    bounds = [0, *sorted(splits), L]
    segments = list(zip(bounds, bounds[1:]))
    rung_segments = tuple(tuple(s for s, (first, _) in enumerate(segments) if first in own)
                          for own in map(set, own_blocks))
    return LadderLayout(base=base, kept=kept, splits=tuple(sorted(splits)),
                        ranks_at=tuple(sorted(ranks)), rung_segments=rung_segments)


def write_head(model, path: Path) -> Path:
    """Write the decoder's final RMSNorm and lm_head as `head.npz` (float32, no pickle)."""
    from ros2_gmskip.vlm.llama_block import rms_eps

    text = model.model.language_model
    if getattr(model.lm_head, 'bias', None) is not None:
        raise BundleError("export --ladder: this model's lm_head has a bias, which head.npz "
                          'does not carry: export without --ladder')
    np.savez(path, norm_weight=text.norm.weight.detach().float().numpy(),
             lm_head=model.lm_head.weight.detach().float().numpy(),
             eps=np.array(rms_eps(text.norm), dtype=np.float32))
    return path
