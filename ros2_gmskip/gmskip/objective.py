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
The GM-Skip objective: balance the task score against sparsity.

    J(R) = S(R) / S(empty) + lam * |R| / L

S(R) is the task metric with the blocks in R removed, S(empty) the unpruned baseline, L the number
of blocks (with S(empty) = 0 the ratio is 1 + S(R): see `Objective.ratio`). A state is feasible
when it respects the optional floor on the score ratio and the cap on sparsity; the plan chosen
is the feasible state with the highest J.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from ros2_gmskip.errors import MetricError, PlanError

# Slack for comparing ratios/fractions computed in floating point (e.g. 3/10 <= 0.3).
EPS = 1e-9


@dataclass(frozen=True)
class Objective:
    """Score-sparsity balance and the constraints a plan must meet."""

    lam: float = 0.3                        # weight of sparsity |R|/L against the score ratio
    min_score_ratio: float | None = None    # floor on S(R)/S(empty), e.g. 0.98; None = no floor
    max_sparsity: float | None = None       # cap on |R|/L in [0, 1]; None = no cap

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise PlanError(f'lambda {self.lam!r} must be a finite number >= 0')
        if self.min_score_ratio is not None and not (
                math.isfinite(self.min_score_ratio) and self.min_score_ratio >= 0):
            raise PlanError(f'min score ratio {self.min_score_ratio!r} must be a number >= 0 '
                            '(e.g. 0.98 keeps 98% of the baseline score)')
        if self.max_sparsity is not None and not 0.0 <= self.max_sparsity <= 1.0:
            raise PlanError(f'max sparsity {self.max_sparsity!r} must be in [0, 1]')

    @staticmethod
    def ratio(score: float, baseline: float) -> float:
        """
        Return S(R) / S(empty).

        A zero baseline (CIDEr or accuracy of a model that never gets it right) is a valid
        measurement: nothing can be lost, so the ratio is 1 + S(R) (1 while the score stays 0,
        above 1 for a gain). MetricError for a negative or non-finite baseline.
        """
        if not (math.isfinite(baseline) and baseline >= 0):
            raise MetricError(f'baseline score {baseline!r} is negative or not finite: the score '
                              'ratio is undefined; use a metric where higher is better and the '
                              'unpruned model scores 0 or more')
        if baseline == 0:
            return 1.0 + score
        return score / baseline

    def value(self, score: float, baseline: float, n_removed: int, num_blocks: int) -> float:
        """J = S/S0 + lam * |R|/L."""
        return self.ratio(score, baseline) + self.lam * n_removed / num_blocks

    def feasible(self, score: float, baseline: float, n_removed: int, num_blocks: int) -> bool:
        """Return True when the state meets the score floor and the sparsity cap (those set)."""
        if self.min_score_ratio is not None and (
                self.ratio(score, baseline) < self.min_score_ratio - EPS):
            return False
        if self.max_sparsity is not None and n_removed / num_blocks > self.max_sparsity + EPS:
            return False
        return True

    def sparsity_allows(self, n_removed: int, num_blocks: int) -> bool:
        """Whether removing `n_removed` of `num_blocks` blocks is within the sparsity cap."""
        return self.max_sparsity is None or n_removed / num_blocks <= self.max_sparsity + EPS

    def to_dict(self) -> dict:
        return {'lambda': self.lam, 'min_score_ratio': self.min_score_ratio,
                'max_sparsity': self.max_sparsity}
