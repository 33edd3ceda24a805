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
The GM-Skip search: which blocks to remove, driven only by a score function.

    from ros2_gmskip.gmskip.strategies import search
    result = search(evaluator.score, evaluator.num_blocks, strategy='reverse',
                    objective=Objective(lam=0.3, min_score_ratio=0.98), protect_first=0.25)
    result.best.removed          # e.g. (17, 19, 20, 22, 23)

`score_fn(removed)` returns the task metric S(R) of the model with the sorted blocks `removed`
skipped (higher is better). The search never evaluates the same set twice (it memoises on the
sorted tuple) and never touches the protected first blocks. It asks for a whole step's candidates
at once: a BatchScorer (scoring.py) may compute them in parallel, e.g. on a Ray cluster
(distributed.py); the scores are read in the order asked, so the result does not change.

Strategies:

- `reverse`: one pass from the last block towards the first unprotected one. Block b is added
  to R (kept removed) when R + {b} is feasible (score floor, sparsity cap) and
  J(R + {b}) >= J(R) - tolerance. With tolerance 0 this means: the score ratio may drop by at
  most lam / L per removed block. Once R reaches the sparsity cap the pass ends. Costs
  L - protected + 1 evaluations (with the baseline).
- `greedy`: at each step evaluate every remaining candidate and remove the one with the highest
  score (ties go to the later block); continue until no candidate is left or the sparsity cap is
  reached. Every state is recorded, feasible or not. Costs 1 + C + (C-1) + ... evaluations for C
  candidates.

The trajectory is the sequence of states the strategy moved through, starting at R = empty; the
plan chosen (`best`) is the feasible trajectory state with the highest J, ties going to the state
with more blocks removed (equal J at higher sparsity is the cheaper model). If no state is feasible
the empty plan is returned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

from ros2_gmskip.errors import PlanError
from ros2_gmskip.gmskip.objective import EPS, Objective
from ros2_gmskip.gmskip.scoring import as_scorer, BatchScorer, Removed, ScoreFn

logger = logging.getLogger(__name__)


class Strategy(str, Enum):
    REVERSE = 'reverse'
    GREEDY = 'greedy'


@dataclass
class Step:
    """One state of the search: the removed set and how it scores."""

    removed: tuple[int, ...]     # sorted block indices
    score: float                 # S(R)
    score_ratio: float           # S(R) / S(empty)
    objective: float             # J(R)
    feasible: bool               # meets the score floor and the sparsity cap
    tried: int = 1               # evaluations spent to reach this state (this step)
    block: int | None = None     # block added at this step (None for the empty state)

    def to_dict(self) -> dict:
        data = asdict(self)
        data['removed'] = list(self.removed)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Step:
        return cls(removed=tuple(int(b) for b in data['removed']), score=float(data['score']),
                   score_ratio=float(data['score_ratio']), objective=float(data['objective']),
                   feasible=bool(data['feasible']), tried=int(data.get('tried', 1)),
                   block=None if data.get('block') is None else int(data['block']))


@dataclass
class SearchResult:
    """What the search did and what it chose."""

    baseline: float                    # S(empty)
    num_blocks: int                    # L
    trajectory: list[Step]             # states moved through, starting with R = empty
    best: Step                         # the plan: argmax J over feasible trajectory states
    evaluations: int                   # score_fn calls (memoised: distinct sets)
    strategy: str
    protected: tuple[int, ...]         # blocks never removed
    evaluated: list[Step] = field(default_factory=list)   # every evaluated candidate, in order
    objective: Objective = field(default_factory=Objective)
    tolerance: float = 0.0


def protected_blocks(num_blocks: int, protect_first: float | int) -> tuple[int, ...]:
    """
    Return the first blocks, which the search must not touch.

    An int >= 0 (or an integral float >= 1) is a count; a float in [0, 1) is a fraction of the
    blocks, rounded down (0.25 of 6 blocks protects 1). PlanError when nothing is left to remove.
    """
    if isinstance(protect_first, bool) or not isinstance(protect_first, (int, float)):
        raise PlanError(f'protect_first {protect_first!r} must be a block count or a fraction')
    if isinstance(protect_first, float) and 0.0 <= protect_first < 1.0:
        count = math.floor(protect_first * num_blocks + 1e-9)
    elif protect_first >= 0 and float(protect_first).is_integer():
        count = int(protect_first)
    else:
        raise PlanError(f'protect_first {protect_first!r} must be a block count >= 0 or a '
                        'fraction in [0, 1)')
    if count >= num_blocks:
        raise PlanError(f'protect_first {protect_first!r} protects {count} of {num_blocks} '
                        'blocks: no block is left to remove; lower it')
    return tuple(range(count))


class _Memo:
    """
    Score each distinct sorted removed set once, whole steps at a time.

    `known` holds scores recorded by an interrupted run (--resume): they are reused, but still
    counted, so a resumed search reports the evaluations of an uninterrupted one.
    """

    def __init__(self, scorer: BatchScorer, known: Mapping[Removed, float] | None) -> None:
        self.scorer = scorer
        self.known = dict(known or {})
        self.cache: dict[Removed, float] = {}     # in evaluation order: the progress record
        self.calls = 0

    def many(self, sets: Sequence[Iterable[int]], done: Callable[[], None]) -> list[float]:
        """Return the score of every set, in order; `done()` once per newly scored set."""
        keys = [tuple(sorted(s)) for s in sets]
        todo: list[Removed] = []
        for key in keys:
            if key in self.cache or key in todo:
                continue
            self.calls += 1
            if key in self.known:
                self.cache[key] = self.known[key]
                done()
            else:
                todo.append(key)
        if todo:
            scores = self.scorer.score_many(todo, done=lambda _i: done())
            assert len(scores) == len(todo), f'{len(scores)} scores for {len(todo)} sets'
            self.cache.update(zip(todo, scores))
        return [self.cache[key] for key in keys]


def search(score: ScoreFn | BatchScorer, num_blocks: int, strategy: str = 'reverse',
           objective: Objective = Objective(), protect_first: float | int = 0.25,
           tolerance: float | None = None, progress: bool = True,
           known: Mapping[Removed, float] | None = None,
           on_step: Callable[[dict[Removed, float]], None] | None = None) -> SearchResult:
    """
    Run the GM-Skip search over `num_blocks` blocks; see the module docstring.

    `score` is a score function or a BatchScorer (scoring.py): the same search either way.
    `known` seeds scores an interrupted run recorded; `on_step(scores)` is called after every
    step with every score so far, in evaluation order (calibrate saves them for --resume).
    """
    try:
        strategy = Strategy(strategy)
    except ValueError:
        raise PlanError(f'unknown strategy {strategy!r}: expected one of '
                        f'{", ".join(s.value for s in Strategy)}') from None
    if num_blocks < 2:
        raise PlanError(f'the model has {num_blocks} block(s): nothing to search')
    tolerance = 0.0 if tolerance is None else float(tolerance)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise PlanError(f'tolerance {tolerance!r} must be a finite number >= 0')
    protected = protected_blocks(num_blocks, protect_first)
    candidates = [b for b in range(num_blocks) if b not in protected]
    memo = _Memo(as_scorer(score), known)
    baseline = memo.many([()], done=lambda: None)[0]
    if on_step is not None:
        on_step(memo.cache)
    objective.ratio(baseline, baseline)      # MetricError now if the baseline is negative
    if baseline == 0:
        logger.warning('the unpruned model scores 0: every removal keeps the score ratio at '
                       '1 + S(R); the search is driven by sparsity alone')
    L = num_blocks

    def make_step(removed: tuple[int, ...], score: float, block: int | None, tried: int) -> Step:
        return Step(removed=removed, score=score, score_ratio=objective.ratio(score, baseline),
                    objective=objective.value(score, baseline, len(removed), L),
                    feasible=objective.feasible(score, baseline, len(removed), L),
                    tried=tried, block=block)

    start = make_step((), baseline, None, 1)
    trajectory, evaluated = [start], [start]
    C = len(candidates)
    if strategy is Strategy.REVERSE:
        total = C
    else:   # C + (C-1) + ... for as many steps as the sparsity cap allows
        steps = C if objective.max_sparsity is None else min(
            C, math.floor(objective.max_sparsity * L + EPS))
        total = sum(C - k for k in range(steps))
    bar = _progress_bar(total, strategy.value, enabled=progress)
    best_j = start.objective if start.feasible else -math.inf

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    def evaluate(blocks: Sequence[int], current: Step, tried: int) -> list[Step]:
        """Score R + {b} for every b in `blocks` (one step), in that order."""
        nonlocal best_j
        sets = [tuple(sorted(current.removed + (b,))) for b in blocks]
        steps = [make_step(removed, value, block, tried)
                 for removed, value, block in zip(sets, memo.many(sets, tick), blocks)]
        evaluated.extend(steps)
        best_j = max([best_j] + [s.objective for s in steps if s.feasible])
        if bar is not None:
            bar.set_postfix(step=len(trajectory), block=blocks[-1], best_J=f'{best_j:.4f}')
        if on_step is not None:
            on_step(memo.cache)
        return steps

    try:
        if strategy is Strategy.REVERSE:
            current, tried = start, 0
            for block in reversed(candidates):
                if not objective.sparsity_allows(len(current.removed) + 1, L):
                    logger.info('reverse: sparsity cap %.3f reached at %d blocks removed',
                                objective.max_sparsity, len(current.removed))
                    break
                tried += 1
                step, = evaluate([block], current, tried)
                if step.feasible and step.objective >= current.objective - tolerance - EPS:
                    current, tried = step, 0
                    trajectory.append(step)
                    logger.info('reverse: remove block %d -> R=%s S/S0=%.4f J=%.4f', block,
                                list(step.removed), step.score_ratio, step.objective)
                else:
                    logger.debug('reverse: keep block %d (S/S0=%.4f J=%.4f feasible=%s)', block,
                                 step.score_ratio, step.objective, step.feasible)
        else:
            current = start
            remaining = list(candidates)
            while remaining and objective.sparsity_allows(len(current.removed) + 1, L):
                chosen = None
                for step in evaluate(remaining, current, len(remaining)):
                    # ties go to the later block: `>=` while blocks ascend
                    if chosen is None or step.score >= chosen.score:
                        chosen = step
                remaining.remove(chosen.block)
                current = chosen
                trajectory.append(chosen)
                logger.info('greedy: remove block %d -> R=%s S/S0=%.4f J=%.4f feasible=%s',
                            chosen.block, list(chosen.removed), chosen.score_ratio,
                            chosen.objective, chosen.feasible)
    finally:
        if bar is not None:
            bar.close()

    return SearchResult(baseline=baseline, num_blocks=L, trajectory=trajectory,
                        best=choose_best(trajectory), evaluations=memo.calls,
                        strategy=strategy.value, protected=protected, evaluated=evaluated,
                        objective=objective, tolerance=tolerance)


def choose_best(trajectory: list[Step]) -> Step:
    """Argmax J over the feasible states; ties -> more blocks removed; none feasible -> empty."""
    feasible = [s for s in trajectory if s.feasible]
    if not feasible:
        return trajectory[0]
    return max(feasible, key=lambda s: (round(s.objective, 9), len(s.removed)))


def _progress_bar(total: int, strategy: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f'GM-Skip {strategy}', unit='eval', leave=False)
