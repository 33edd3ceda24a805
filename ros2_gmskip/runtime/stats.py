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

"""Rolling latency statistics (percentiles per stage, rates) for node, replay, demo and bench."""

from __future__ import annotations

from collections import deque
import math
import time

import numpy as np
from ros2_gmskip.runtime.results import Result

STAGES = ('preprocess_ms', 'vision_ms', 'prefill_ms', 'decode_per_token_ms', 'total_ms')


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    """{'p50': .., 'p90': .., 'p99': .., 'max': ..}; NaN when there are no values."""
    arr = np.asarray(list(values), dtype=np.float64)
    out = {f'p{q}': float(np.percentile(arr, q)) if arr.size else math.nan for q in qs}
    out['max'] = float(arr.max()) if arr.size else math.nan
    return out


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._stamps: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        self._stamps.append(time.monotonic() if now is None else now)

    def rate_hz(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._stamps and now - self._stamps[0] > self.window_s:
            self._stamps.popleft()
        if len(self._stamps) < 2:
            return 0.0
        span = max(now - self._stamps[0], 1e-9)
        return (len(self._stamps) - 1) / span if span > 0 else 0.0


class LatencyStats:
    """Keeps the last `window` results (bounded memory) and summarises them per stage."""

    def __init__(self, window: int = 1000) -> None:
        self._results: deque[Result] = deque(maxlen=window)
        self.count = 0
        self.tokens = 0

    def add(self, result: Result) -> None:
        self._results.append(result)
        self.count += 1
        self.tokens += result.tokens

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {p50, p90, p99, max}} over the window, plus tokens_per_s."""
        out: dict[str, dict[str, float]] = {}
        for stage in STAGES:
            if stage == 'decode_per_token_ms':
                vals = [r.latency.decode_per_token_ms for r in self._results]
            else:
                vals = [getattr(r.latency, stage) for r in self._results]
            out[stage] = percentiles(vals)
        total_s = sum(r.latency.total_ms for r in self._results) / 1000.0
        toks = sum(r.tokens for r in self._results)
        out['tokens_per_s'] = {'mean': toks / total_s if total_s > 0 else 0.0}
        return out
