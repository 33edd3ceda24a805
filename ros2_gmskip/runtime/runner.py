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
Define what an engine must do to run one decoder segment: the runner protocol.

A bundle's decoder is N >= 1 segments (bundle_format.Segment: blocks [first, stop) with their own
KV cache). The decode loop (runtime/decode.py) drives one runner per segment and never sees an
engine; an engine kind is one class with these three methods:

    prefill(rows, positions)          start a request: the cache becomes these rows
    run(rows, positions, cached)      append rows after the first `cached` cache rows
    compact(keep)                     keep only these cache rows (visual KV removal)

`rows` is the segment's input (1, n, C): token embeddings for segment 0, the residual stream for
the others; `positions` (n,) int64 their absolute positions (FastV keeps a row's original one).
What comes back is the segment's output for those rows: the residual stream (1, n, C), or from the
last segment logits - of the last row after a prefill (1, 1, V), of every row after a run
(1, n, V), which is what speculative decoding checks its guesses with. A returned array may be
the runner's own buffer: it is valid until the runner's next call.

Implementations: ort_runners.PortableRunner (the plain-op graphs, any ONNX Runtime provider),
ort_runners.FusedRunner (the fused ONNX Runtime graphs, KV cache in place, quantized step graphs),
trt_backend.TrtRunner (TensorRT engines built from the plain-op graphs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ros2_gmskip.bundle_format import Segment


@dataclass
class Prefilled:
    """What a segment's prefill gives back."""

    out: np.ndarray                       # (1, T, C) residual stream, or (1, 1, V) logits
    attention: np.ndarray | None = None   # ranking segments: (T,) what the last row pays each
    #                                       cached row, head-averaged, in the segment's last block


@runtime_checkable
class SegmentRunner(Protocol):
    """Run rows through one decoder segment, keeping that segment's KV cache."""

    segment: Segment
    max_rows: int | None        # the most rows one `run` takes (None: any; 1: no drafts)
    max_length: int | None      # the most rows the cache holds (None: no limit)
    explicit_positions: bool    # rotates at `positions` (False: at the cache length, so it
    #                             cannot take FastV-pruned rows or a compacted cache)

    def prefill(self, rows: np.ndarray, positions: np.ndarray) -> Prefilled:
        """Start a request: the cache becomes `rows` (1, T, C) at `positions` (T,)."""
        ...

    def run(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> np.ndarray:
        """Append `rows` (1, n, C) after the first `cached` cache rows; return their outputs."""
        ...

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the cache rows `keep` (sorted indices), in that order."""
        ...
