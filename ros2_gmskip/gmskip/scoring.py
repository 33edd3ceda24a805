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
Score one search step's candidates: in this process, or on a Ray cluster (distributed.py).

The search hands a scorer every candidate of a step at once and reads the scores back in the
order it asked, so the trajectory and its tie-breaking cannot depend on who computed a score or
when. That is the only difference between a serial and a distributed search.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

from ros2_gmskip.errors import GmSkipError, MetricError

Removed = tuple[int, ...]
ScoreFn = Callable[[Removed], float]
Done = Callable[[int], None]     # called with a candidate's index when its score is known


class BatchScorer(Protocol):
    """Scores the removal sets of one step; `workers` is how many evaluate at once."""

    workers: int

    def score_many(self, sets: Sequence[Removed], done: Done | None = None) -> list[float]:
        """Return S(R) of every set, in the order given; call `done(i)` as each one is known."""


class SerialScorer:
    """A score function, called once per set in this process."""

    workers = 1

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn

    def score_many(self, sets: Sequence[Removed], done: Done | None = None) -> list[float]:
        """Return S(R) of every set, computed one after the other."""
        scores = []
        for i, removed in enumerate(sets):
            scores.append(checked_score(self.score_fn, removed, f'removed={list(removed)}'))
            if done is not None:
                done(i)
        return scores


def as_scorer(score: ScoreFn | BatchScorer) -> BatchScorer:
    """Return `score` if it scores whole steps, else a SerialScorer calling it."""
    return score if hasattr(score, 'score_many') else SerialScorer(score)


def checked_score(score_fn: Callable[[Any], Any], arg: Any, what: str) -> float:
    """
    Return score_fn(arg) as a finite float.

    A raise, a non-number or NaN/inf is a one-line MetricError naming `what` was scored.
    """
    try:
        value = score_fn(arg)
    except GmSkipError:
        raise
    except Exception as err:
        raise MetricError(f'metric raised {type(err).__name__}: {err} for {what}') from err
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MetricError(f'metric returned {value!r}, not a number, for {what}') from None
    if not math.isfinite(value):
        raise MetricError(f'metric returned {value} for {what}')
    return value
