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

"""The GM-Skip search on synthetic score functions whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest
from ros2_gmskip.errors import MetricError, PlanError
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.strategies import choose_best, protected_blocks, search

# 8 blocks; removing block b costs IMPORTANCE[b] of the score (baseline 1).
# With lambda 0.3 a removal pays when it costs <= 0.3 / 8 = 0.0375.
IMPORTANCE = [0.5, 0.3, 0.2, 0.01, 0.1, 0.02, 0.005, 0.03]
L = len(IMPORTANCE)


class Additive:
    """score(R) = 1 - sum of importances, counting calls."""

    def __init__(self, importance=IMPORTANCE):
        self.importance = importance
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, removed: tuple[int, ...]) -> float:
        self.calls.append(removed)
        return 1.0 - sum(self.importance[b] for b in removed)


def run(strategy, score=None, **kwargs):
    kwargs.setdefault('progress', False)
    return search(score or Additive(), L, strategy=strategy, **kwargs)


def test_reverse_keeps_cheap_removals():
    score = Additive()
    result = run('reverse', score)
    # from block 7 down to block 2 (0.25 of 8 protects blocks 0, 1): 7, 6, 5 cheap, 4 not,
    # 3 cheap, 2 not
    assert result.best.removed == (3, 5, 6, 7)
    assert [s.block for s in result.trajectory] == [None, 7, 6, 5, 3]
    assert [s.tried for s in result.trajectory] == [1, 1, 1, 1, 2]
    assert result.protected == (0, 1)
    assert result.evaluations == L - 2 + 1 == len(score.calls)
    assert score.calls[0] == ()
    assert result.best.score == pytest.approx(1 - 0.065)
    assert result.best.objective == pytest.approx(1 - 0.065 + 0.3 * 4 / 8)
    assert len(result.evaluated) == result.evaluations


def test_greedy_removes_least_harmful_first():
    score = Additive()
    result = run('greedy', score)
    assert [s.block for s in result.trajectory] == [None, 6, 3, 5, 7, 4, 2]
    # J: 1, 1.0325, 1.06, 1.0775, 1.085, 1.0225, 0.86 -> the 4-block state
    assert result.best.removed == (3, 5, 6, 7)
    assert result.evaluations == 1 + 6 + 5 + 4 + 3 + 2 + 1 == len(score.calls)
    assert len(set(score.calls)) == len(score.calls)          # never the same set twice


def test_lambda_moves_the_choice():
    # lambda 0.1: a removal pays when it costs <= 0.0125 -> only blocks 6 and 3
    assert run('greedy', objective=Objective(lam=0.1)).best.removed == (3, 6)
    assert run('reverse', objective=Objective(lam=0.1)).best.removed == (3, 6)
    assert run('greedy', objective=Objective(lam=0.3)).best.removed == (3, 5, 6, 7)
    # lambda 0: nothing is worth any loss
    assert run('greedy', objective=Objective(lam=0.0)).best.removed == ()


def test_protect_first_count_and_fraction():
    assert protected_blocks(8, 0.25) == (0, 1)
    assert protected_blocks(8, 0.3) == (0, 1)          # floor(2.4)
    assert protected_blocks(8, 3) == (0, 1, 2)
    assert protected_blocks(8, 0) == ()
    assert protected_blocks(8, 0.0) == ()
    assert protected_blocks(8, 7) == tuple(range(7))
    result = run('reverse', protect_first=4)
    assert result.protected == (0, 1, 2, 3)
    assert result.best.removed == (5, 6, 7)
    assert result.evaluations == 8 - 4 + 1
    assert run('greedy', protect_first=0.5).best.removed == (5, 6, 7)


@pytest.mark.parametrize('protect', [8, 9, math.nan, -1, 1.5, True, '2'])
def test_protect_first_leaving_nothing_is_an_error(protect):
    with pytest.raises(PlanError, match='protect_first'):
        run('reverse', protect_first=protect)


def test_ties_go_to_the_later_block():
    tied = [0.0, 0.0, 0.0, 0.0, 0.01, 0.01, 0.01, 0.5]
    result = search(Additive(tied), L, strategy='greedy', protect_first=4, progress=False)
    assert [s.block for s in result.trajectory][:4] == [None, 6, 5, 4]


def test_equal_objective_prefers_more_sparsity():
    # block 7 costs exactly lambda/L: J unchanged by removing it -> keep the sparser plan
    costs = [0.5] * 7 + [0.1]
    result = search(Additive(costs), L, strategy='reverse', objective=Objective(lam=0.8),
                    protect_first=7, progress=False)
    assert result.trajectory[1].objective == pytest.approx(result.trajectory[0].objective)
    assert result.best.removed == (7,)


def test_min_score_ratio_floor():
    floor = Objective(lam=0.3, min_score_ratio=0.95)
    greedy = run('greedy', objective=floor)
    # ratios .995 .985 .965 .935 ...: the 4-block state falls under the floor
    assert greedy.best.removed == (3, 5, 6)
    assert not greedy.trajectory[4].feasible
    assert all(s.feasible for s in greedy.trajectory[:4])
    # reverse: 7 (.97), 6 (.965), 5 would give .945 < .95, 4 no, 3 (.955), 2 no
    reverse = run('reverse', objective=floor)
    assert reverse.best.removed == (3, 6, 7)
    assert reverse.best.score_ratio >= 0.95


def test_max_sparsity_cap():
    capped = Objective(lam=0.3, max_sparsity=0.25)            # at most 2 of 8 blocks
    greedy = run('greedy', objective=capped)
    assert greedy.best.removed == (3, 6)
    assert max(len(s.removed) for s in greedy.trajectory) == 2
    assert greedy.evaluations == 1 + 6 + 5
    reverse = run('reverse', objective=capped)
    assert reverse.best.removed == (6, 7)
    assert reverse.evaluations == 3


def test_tolerance_lets_reverse_accept_a_dip():
    # tolerance 0.1: block 4 (J 1.0575 -> 0.995) is accepted, block 2 (1.0225 -> 0.86) is not;
    # argmax J then goes back to the state before the dip
    result = run('reverse', tolerance=0.1)
    assert [s.block for s in result.trajectory] == [None, 7, 6, 5, 4, 3]
    assert result.best.removed == (5, 6, 7)
    assert result.best is choose_best(result.trajectory)
    assert result.tolerance == 0.1


@pytest.mark.parametrize('bad', [math.nan, math.inf, None, 'x'])
def test_non_finite_metric_is_a_metric_error(bad):
    def score(removed):
        return bad if 7 in removed else 1.0
    with pytest.raises(MetricError, match=r'removed=\[7\]'):
        search(score, L, progress=False)


def test_raising_metric_is_a_metric_error():
    def score(removed):
        if removed:
            raise ZeroDivisionError('no samples')
        return 1.0
    with pytest.raises(MetricError, match='ZeroDivisionError: no samples for removed=\\[7\\]'):
        search(score, L, progress=False)


def test_zero_baseline_searches_on_sparsity():
    """A model scoring 0 (CIDEr of a weak model) loses nothing: ratio 1 + S, J rises with |R|."""
    result = search(lambda removed: 0.0, L, strategy='reverse', progress=False,
                    objective=Objective(lam=0.3, min_score_ratio=0.98))
    assert result.baseline == 0.0
    assert all(step.score_ratio == 1.0 for step in result.trajectory)
    assert len(result.best.removed) == len(result.trajectory) - 1 > 0
    gain = search(lambda removed: 0.5 if removed else 0.0, L, strategy='greedy',
                  progress=False)
    assert gain.trajectory[1].score_ratio == pytest.approx(1.5)


def test_negative_baseline_is_a_metric_error():
    with pytest.raises(MetricError, match='baseline score -1.0 is negative'):
        search(lambda removed: -1.0, L, progress=False)


def test_bad_arguments():
    with pytest.raises(PlanError, match='unknown strategy'):
        run('random')
    with pytest.raises(PlanError, match='nothing to search'):
        search(Additive(), 1, progress=False)
    with pytest.raises(PlanError, match='lambda'):
        Objective(lam=-1)
    with pytest.raises(PlanError, match='max sparsity'):
        Objective(max_sparsity=1.5)


def test_objective_value_and_feasible():
    obj = Objective(lam=0.5, min_score_ratio=0.9, max_sparsity=0.5)
    assert obj.value(0.8, 1.0, 2, 4) == pytest.approx(0.8 + 0.25)
    assert obj.feasible(0.9, 1.0, 2, 4)
    assert not obj.feasible(0.89, 1.0, 1, 4)
    assert not obj.feasible(1.0, 1.0, 3, 4)
    assert Objective(max_sparsity=0.3).feasible(1.0, 1.0, 3, 10)     # 3/10 <= 0.3 despite floats
    assert obj.value(0.5, 0.0, 1, 4) == pytest.approx(1.5 + 0.125)     # zero baseline: 1 + S
    with pytest.raises(MetricError):
        obj.value(0.5, float('nan'), 1, 4)


def test_progress_bar_runs(capsys):
    result = search(Additive(), L, strategy='greedy', progress=True)
    assert result.best.removed == (3, 5, 6, 7)


class Stop(Exception):
    """Stands in for Ctrl-C or a crash between two steps."""


@pytest.mark.parametrize('strategy', ['greedy', 'reverse'])
@pytest.mark.parametrize('stop_after', [1, 3])
def test_interrupted_search_resumes_to_the_same_plan(strategy, stop_after):
    full = run(strategy, Additive())
    saved = []

    def on_step(scores):
        saved.append(dict(scores))
        if len(saved) > stop_after:            # the baseline's record, then `stop_after` steps
            raise Stop

    with pytest.raises(Stop):
        run(strategy, Additive(), on_step=on_step)
    known = saved[-1]
    score = Additive()
    resumed = run(strategy, score, known=known)
    assert [s.to_dict() for s in resumed.trajectory] == [s.to_dict() for s in full.trajectory]
    assert [s.to_dict() for s in resumed.evaluated] == [s.to_dict() for s in full.evaluated]
    assert resumed.best == full.best and resumed.evaluations == full.evaluations
    assert not set(score.calls) & set(known)                # nothing scored twice
    assert len(score.calls) == full.evaluations - len(known)


def test_batch_scorer_gets_whole_steps_in_order():
    class Recording:
        workers = 4

        def __init__(self):
            self.asked = []

        def score_many(self, sets, done=None):
            self.asked.append(list(sets))
            scores = [1.0 - sum(IMPORTANCE[b] for b in s) for s in sets]
            for i in reversed(range(len(sets))):     # finishing out of order changes nothing
                done(i)
            return scores

    scorer = Recording()
    result = search(scorer, L, strategy='greedy', progress=False)
    assert result.best.removed == run('greedy').best.removed
    assert [len(a) for a in scorer.asked] == [1, 6, 5, 4, 3, 2, 1]
    assert scorer.asked[1] == [(2,), (3,), (4,), (5,), (6,), (7,)]
