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
Run one rung of a ladder bundle: the rung's segments as the decode loop's runners, then the head.

A ladder bundle (`export --ladder`, exporters/ladder_export.py) is the least-pruned rung's
decoder split where the rungs differ; a rung runs a subset of its segments. The decode loop
(runtime/decode.py) is given, per rung, views of the shared runners (`RungRunner`): each shows
the loop the segment renumbered in the rung's own blocks (so FastV's K and KV removal's first
layer count the rung's blocks, as calibration and the torch reference do), and the rung's last
view applies the final norm + lm_head (`Head`, from head.npz) to the residual stream it gets.
The runners, their caches and the weights are shared by every rung: one copy, any rung per
request.

    loops = rung_loops(bundle, runners, make_loop)       # one DecodeLoop per rung
    loops[rung].generate(...)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
from ros2_gmskip.bundle_format import Bundle, REEXPORT
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.ladder import Ladder
from ros2_gmskip.runtime.runner import Prefilled, SegmentRunner


class Head:
    """The decoder's final RMSNorm and lm_head in numpy: residual stream -> logits."""

    def __init__(self, norm_weight: np.ndarray, lm_head: np.ndarray, eps: float) -> None:
        self.norm_weight = np.ascontiguousarray(norm_weight, dtype=np.float32)   # (C,)
        self.weight_t = np.ascontiguousarray(np.asarray(lm_head, np.float32).T)   # (C, V)
        self.eps = np.float32(eps)

    @classmethod
    def load(cls, bundle: Bundle) -> Head:
        """Read the bundle's head file (listed and hashed like every bundle file)."""
        m = bundle.manifest
        try:
            with np.load(bundle.file(m.ladder.head), allow_pickle=False) as f:
                head = cls(f['norm_weight'], f['lm_head'], float(f['eps']))
        except (OSError, KeyError, ValueError) as err:
            raise BundleError(f'{bundle.where()}: {m.ladder.head} unreadable ({err}): '
                              f'{REEXPORT}') from None
        want = (m.decoder.hidden_size, m.decoder.vocab_size)
        if head.weight_t.shape != want or head.norm_weight.shape != want[:1]:
            raise BundleError(f'{bundle.where()}: {m.ladder.head} has lm_head '
                              f'{head.weight_t.shape[::-1]}, the manifest says {want[::-1]}: '
                              f'{REEXPORT}')
        return head

    def __call__(self, h: np.ndarray) -> np.ndarray:
        """Return the logits (1, n, V) of the residual stream rows `h` (1, n, C)."""
        variance = np.mean(np.square(h), axis=-1, keepdims=True, dtype=np.float32)
        normed = (h / np.sqrt(variance + self.eps)) * self.norm_weight
        return normed @ self.weight_t


class RungRunner:
    """A shared segment runner as one rung's loop sees it (the module docstring)."""

    def __init__(self, inner: SegmentRunner, first: int, last: bool, ranks: bool,
                 head: Head | None) -> None:
        seg = inner.segment
        self.inner, self.head = inner, head
        self.segment = replace(seg, first=first, stop=first + seg.stop - seg.first, last=last,
                               ranks=ranks)
        self.max_rows = inner.max_rows
        self.max_length = inner.max_length
        self.explicit_positions = inner.explicit_positions

    def prefill(self, rows: np.ndarray, positions: np.ndarray) -> Prefilled:
        """Run the segment; the rung's last one returns the last row's logits."""
        out = self.inner.prefill(rows, positions)
        if self.head is None:
            return out
        return Prefilled(self.head(out.out[:, -1:]), out.attention)

    def run(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> np.ndarray:
        """Run the segment; the rung's last one returns every row's logits."""
        out = self.inner.run(rows, positions, cached)
        return out if self.head is None else self.head(out)

    def compact(self, keep: np.ndarray) -> None:
        """Compact the shared runner's cache."""
        self.inner.compact(keep)


def rung_runners(runners: Sequence[SegmentRunner], segments: Sequence[int], head: Head,
                 fastv_k: int | None) -> list[RungRunner]:
    """Return one rung's views of `runners` (a rung runs `segments`, indices into them)."""
    views, first = [], 0
    for n, s in enumerate(segments):
        inner = runners[s]
        stop = first + inner.segment.stop - inner.segment.first
        last = n == len(segments) - 1
        views.append(RungRunner(inner, first, last, inner.segment.ranks and stop == fastv_k,
                                head if last else None))
        first = stop
    return views


def bundle_ladder(bundle: Bundle) -> Ladder:
    """Return the run-time ladder (rungs, plan rung) of a ladder bundle's manifest."""
    record = bundle.manifest.ladder
    return Ladder.from_rungs([list(r.removed_blocks) for r in record.rungs], record.num_blocks,
                             bundle.manifest.blocks_removed, [r.score for r in record.rungs],
                             [r.flops_ratio for r in record.rungs])


def rung_loops(bundle: Bundle, runners: Sequence[SegmentRunner], head: Head, fastv_k: int | None,
               make_loop: Callable[[list, int], object]) -> list:
    """Return `make_loop(views, rung)` for every rung of the bundle's ladder."""
    return [make_loop(rung_runners(runners, r.segments, head, fastv_k), i)
            for i, r in enumerate(bundle.manifest.ladder.rungs)]
