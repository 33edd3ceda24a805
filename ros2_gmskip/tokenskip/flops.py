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
Estimated decoder FLOPs with GM-Skip, FastV and Skip-Vision KV removal.

GM-Skip removes blocks, FastV prunes image tokens after layer K, and Skip-Vision KV removal drops
visual keys from the cache after prefill.

    dims = DecoderDims.from_config(model.config.get_text_config(decoder=True))
    full = prefill_flops(dims, n_tokens=70, n_image=64)
    both = prefill_flops(dims, 70, 64, removed_blocks=[13, 14, 15],
                         fastv=FastVConfig(k=2, r=0.5))
    step = decode_flops(dims, context=80, n_image=64, kv_ratio=1.0)      # one generated token

The per-layer estimate is the one of the FastV paper (arXiv 2403.06764, Sec. 4.3):

    FLOPs(layer) = 4*n*d^2 + 2*n^2*d + 2*n*d*m

n tokens, d hidden size, m FFN width: 4nd^2 for the q/k/v/o projections, 2n^2d for the attention
scores and their weighted sum over values, 2ndm for the FFN. (Like the paper it counts a gated
FFN's three matrices as two and ignores norms, RoPE, softmax and the LM head: the estimate is for
comparing settings, not an exact count.) A step with n queries over s keys costs 4nd^2 + 2nsd +
2ndm, which with n = s is the formula above and with n = 1 is one decode step.

Pure arithmetic, no torch: the CLI, benches and the runtime may import it freely. `num_kept` is the
one place that says how many tokens a ratio keeps (FastV and Skip-FFN both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Iterable

# Ratios such as 0.7 are not exact in binary: (1 - 0.7) * 10 = 3.0000000000000004 would ceil to 4.
_EPS = 1e-9


def num_kept(n: int, r: float) -> int:
    """Tokens kept out of `n` when a share `r` is pruned: ceil((1 - r) * n), r in [0, 1]."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f'ratio must be in [0, 1], got {r!r}')
    return min(n, max(0, math.ceil((1.0 - r) * n - _EPS)))


def layer_flops(n: int, d: int, m: int, n_keys: int | None = None) -> int:
    """One decoder layer, `n` query tokens over `n_keys` keys (default n: a prefill)."""
    s = n if n_keys is None else n_keys
    return 4 * n * d * d + 2 * n * s * d + 2 * n * d * m


@dataclass(frozen=True)
class DecoderDims:
    """The sizes the estimate needs."""

    layers: int     # decoder blocks of the full model (before any GM-Skip removal)
    hidden: int     # d
    ffn: int        # m

    @classmethod
    def from_config(cls, config: Any) -> 'DecoderDims':
        """From a (text) config with num_hidden_layers, hidden_size, intermediate_size."""
        return cls(layers=int(config.num_hidden_layers), hidden=int(config.hidden_size),
                   ffn=int(config.intermediate_size))


def _remaining(dims: DecoderDims, removed_blocks: Iterable[int]) -> int:
    removed = {int(b) for b in removed_blocks}
    bad = sorted(b for b in removed if not 0 <= b < dims.layers)
    if bad:
        raise ValueError(f'removed blocks {bad} out of range for {dims.layers} blocks')
    return dims.layers - len(removed)


def _pruned_image_tokens(layer: int, n_image: int, fastv: Any | None) -> int:
    """Image tokens FastV has pruned by `layer` (an index into the remaining blocks)."""
    if fastv is None or layer < fastv.k:
        return 0
    return n_image - num_kept(n_image, fastv.r)


def prefill_flops(dims: DecoderDims, n_tokens: int, n_image: int,
                  removed_blocks: Iterable[int] = (), fastv: Any | None = None) -> int:
    """
    Prefill of a prompt of `n_tokens` tokens, `n_image` of them image tokens.

    `removed_blocks`: GM-Skip's removed block indices (full-model numbering). `fastv`: anything
    with `.k` and `.r` (a FastVConfig); K counts the blocks that remain after removal, since FastV
    runs on the pruned model. Full model: both left at their defaults.
    """
    if not 0 <= n_image <= n_tokens:
        raise ValueError(f'n_image must be in [0, n_tokens={n_tokens}], got {n_image}')
    total = 0
    for layer in range(_remaining(dims, removed_blocks)):
        n = n_tokens - _pruned_image_tokens(layer, n_image, fastv)
        total += layer_flops(n, dims.hidden, dims.ffn)
    return total


def decode_flops(dims: DecoderDims, context: int, n_image: int,
                 removed_blocks: Iterable[int] = (), fastv: Any | None = None,
                 kv_ratio: float = 0.0, kv_start: int = 0) -> int:
    """
    One decode step: a new token after `context` tokens (prompt + tokens generated so far).

    Keys per layer: context + 1, minus the image tokens FastV pruned (layers >= K), minus the
    visual KV entries Skip-Vision removed: a share `kv_ratio` of the visual tokens still cached, in
    layers >= `kv_start` (same counting as the removal itself: num_kept of the cached visual tokens
    stay).
    """
    total = 0
    for layer in range(_remaining(dims, removed_blocks)):
        cached_image = n_image - _pruned_image_tokens(layer, n_image, fastv)
        removed = cached_image - num_kept(cached_image, kv_ratio) if layer >= kv_start else 0
        n_keys = context + 1 - (n_image - cached_image) - removed
        total += layer_flops(1, dims.hidden, dims.ffn, n_keys=n_keys)
    return total


def generation_flops(dims: DecoderDims, n_tokens: int, n_image: int, new_tokens: int,
                     removed_blocks: Iterable[int] = (), fastv: Any | None = None,
                     kv_ratio: float = 0.0, kv_start: int = 0) -> int:
    """Prefill plus `new_tokens` - 1 decode steps (the first token comes from the prefill)."""
    total = prefill_flops(dims, n_tokens, n_image, removed_blocks, fastv)
    for step in range(1, new_tokens):
        total += decode_flops(dims, n_tokens + step - 1, n_image, removed_blocks, fastv,
                              kv_ratio, kv_start)
    return total
