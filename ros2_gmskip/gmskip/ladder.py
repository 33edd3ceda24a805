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
Plan ladders: the nested plans of a GM-Skip trajectory, so the node can trade depth for time.

    ladder, table = build_ladder(result.trajectory, plan, plan_id(plan), evaluator.score,
                                 workload, known=scores)
    save_ladder(ladder, ladder_path('plans/p.json'))      # plans/p.ladder.json
    ladder = load_ladder('plans/p.ladder.json', model_dir=model_dir)   # refuses other weights

Why nested: both strategies walk a chain of removal sets, each step adding one block to the
previous set (reverse: the accepted removals; greedy: the least harmful block per step, every
state recorded), so any states of their trajectory are nested plans, and one bundle holding the
deepest rung's blocks can run every rung by skipping blocks (export --ladder).

Rungs, fastest first:
1. every state of the trajectory (the plan is one of them);
2. faster than its last state, up to `extra` more: the least harmful remaining block is removed
   per step (a greedy continuation, nested too), never a protected block, stopping below `floor`.
   Reverse ends its trajectory at its last accepted removal (usually the plan), so without this
   the node would have nothing faster than the plan; greedy already walks to the end;
3. a rung is dropped when its score ratio is below `floor`, or when a faster rung scores at
   least as well (it would cost time for nothing). The plan is always kept.

Scores are the calibration metric of each rung with the plan's token skipping (FastV, KV
removal) applied to every rung, as export and the node run them; known scores (the search's own,
when the plan has no token skipping) cost no evaluation. FLOPs are tokenskip/flops.py's decoder
estimate of one description at the plan's workload (prompt, image tokens, the plan's mean
generated tokens), as in the token search.

The file (format `ros2_gmskip/plan-ladder@1`):

    {"format": "ros2_gmskip/plan-ladder@1",
     "model": {"path", "sha256", "family", "num_blocks"}, "stack": "decoder",
     "plan": {"id": "6cbb4155d39c", "removed_blocks": [...]},
     "metric": {"name": "accuracy", "baseline": 0.942, "split": "val", "n": 1000},
     "strategy": "reverse", "tokens": {"fastv": ..., "kv_removal": ...} | null,
     "flops": {"reference": "...", "workload": {...}, "full": 123456789},
     "rungs": [{"removed_blocks": [...], "score", "score_ratio", "flops", "flops_ratio",
                "origin": "trajectory" | "extension"}, ...],          # fastest first
     "created_by": "ros2_gmskip 0.1.0", "created_at": "..."}

Pure stdlib (no torch): the node reads ladders; the score is a callback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ros2_gmskip import __version__
from ros2_gmskip.errors import PlanError
from ros2_gmskip.folders import write_file
from ros2_gmskip.gmskip.objective import EPS
from ros2_gmskip.gmskip.plan import _field, ModelRef, SkipPlan, STACKS, weights_sha256
from ros2_gmskip.gmskip.scoring import checked_score
from ros2_gmskip.gmskip.strategies import protected_blocks, Step
from ros2_gmskip.gmskip.token_search import FLOPS_REFERENCE, Workload
from ros2_gmskip.runtime.ladder import Ladder, LadderError
from ros2_gmskip.tokenskip.settings import TokenSkip

LADDER_FORMAT = 'ros2_gmskip/plan-ladder@1'
ORIGINS = ('trajectory', 'extension')
EXTRA = 3          # rungs beyond the trajectory's last state, at most
FLOOR = 0.9        # drop rungs scoring below this share of the unpruned model

logger = logging.getLogger(__name__)

ScoreFn = Callable[[tuple[int, ...]], float]
ScoreManyFn = Callable[[list[tuple[int, ...]]], list[float]]


def ladder_path(plan_path: str | os.PathLike) -> Path:
    """Return where the ladder of a plan lives: `plans/p.json` -> `plans/p.ladder.json`."""
    path = Path(plan_path)
    stem = path.stem if path.suffix == '.json' else path.name
    return path.with_name(f'{stem}.ladder.json')


@dataclass
class LadderRung:
    """One rung as the file holds it."""

    removed_blocks: tuple[int, ...]
    score: float            # S(rung), with the ladder's token skipping
    score_ratio: float      # S(rung) / S(empty)
    flops: int              # estimated decoder FLOPs of one description
    flops_ratio: float      # flops / the unpruned model's (no token skipping)
    origin: str = 'trajectory'

    def to_dict(self) -> dict[str, Any]:
        return {'removed_blocks': list(self.removed_blocks), 'score': self.score,
                'score_ratio': self.score_ratio, 'flops': self.flops,
                'flops_ratio': self.flops_ratio, 'origin': self.origin}


@dataclass
class Candidate:
    """A state considered for the ladder, kept or not (calibrate prints them all)."""

    rung: LadderRung
    kept: bool
    why: str = ''           # why it was dropped


@dataclass
class PlanLadder:
    """A plan ladder as a Python object; `to_dict` / `from_dict` give the JSON document."""

    model: ModelRef
    plan_id: str
    plan_removed: tuple[int, ...]
    metric: dict[str, Any]           # name, baseline, split, n
    strategy: str
    tokens: dict | None              # TokenSkip.to_dict() applied on every rung; None: none
    workload: dict[str, int]         # Workload.to_dict() the FLOPs are estimated at
    full_flops: int
    rungs: list[LadderRung]          # fastest first
    stack: str = 'decoder'
    created_by: str = f'ros2_gmskip {__version__}'
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec='seconds'))

    def runtime(self) -> Ladder:
        """Return the run-time view (rungs, plan rung) the node and the backends use."""
        return Ladder.from_rungs([r.removed_blocks for r in self.rungs], self.model.num_blocks,
                                 self.plan_removed, [r.score for r in self.rungs],
                                 [r.flops_ratio for r in self.rungs])

    @property
    def plan_rung(self) -> int:
        return self.runtime().plan_rung

    def to_dict(self) -> dict[str, Any]:
        return {
            'format': LADDER_FORMAT,
            'model': {'path': self.model.path, 'sha256': self.model.sha256,
                      'family': self.model.family, 'num_blocks': self.model.num_blocks},
            'stack': self.stack,
            'plan': {'id': self.plan_id, 'removed_blocks': list(self.plan_removed)},
            'metric': dict(self.metric),
            'strategy': self.strategy,
            'tokens': self.tokens,
            'flops': {'reference': FLOPS_REFERENCE, 'workload': dict(self.workload),
                      'full': self.full_flops},
            'rungs': [r.to_dict() for r in self.rungs],
            'created_by': self.created_by,
            'created_at': self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> PlanLadder:
        """Validate and convert a parsed ladder document; PlanError names the bad field."""
        if not isinstance(data, dict):
            raise PlanError(f'expected a JSON object, got {type(data).__name__}')
        fmt = data.get('format')
        if fmt != LADDER_FORMAT:
            raise PlanError(f'format {fmt!r} is not {LADDER_FORMAT!r}: make the ladder with this '
                            'version of ros2-gmskip calibrate')
        model = _field(data, 'model', dict)
        stack = _field(data, 'stack', str)
        if stack not in STACKS:
            raise PlanError(f'stack {stack!r} is not one of {", ".join(STACKS)}')
        plan = _field(data, 'plan', dict)
        metric = _field(data, 'metric', dict)
        flops = _field(data, 'flops', dict)
        rungs = []
        for i, rung in enumerate(_field(data, 'rungs', list)):
            if not isinstance(rung, dict):
                raise PlanError(f'rungs[{i}] is {rung!r}: expected an object')
            prefix = f'rungs[{i}].'
            origin = _field(rung, 'origin', str, prefix)
            if origin not in ORIGINS:
                raise PlanError(f'{prefix}origin {origin!r} is not one of {", ".join(ORIGINS)}')
            flops_value = _field(rung, 'flops', int, prefix)
            if flops_value < 0:
                raise PlanError(f'{prefix}flops is {flops_value}: expected >= 0')
            rungs.append(LadderRung(
                removed_blocks=tuple(_field(rung, 'removed_blocks', list, prefix)),
                score=float(_field(rung, 'score', (int, float), prefix)),
                score_ratio=float(_field(rung, 'score_ratio', (int, float), prefix)),
                flops=flops_value,
                flops_ratio=float(_field(rung, 'flops_ratio', (int, float), prefix)),
                origin=origin))
        tokens = data.get('tokens')
        if tokens is not None and not isinstance(tokens, dict):
            raise PlanError(f'tokens must be null or an object, got {type(tokens).__name__}')
        try:
            TokenSkip.from_dict(tokens)
        except ValueError as err:
            raise PlanError(str(err)) from None
        ladder = cls(
            model=ModelRef(path=_field(model, 'path', str, 'model.'),
                           sha256=_field(model, 'sha256', str, 'model.'),
                           family=_field(model, 'family', str, 'model.'),
                           num_blocks=_field(model, 'num_blocks', int, 'model.')),
            plan_id=_field(plan, 'id', str, 'plan.'),
            plan_removed=tuple(_field(plan, 'removed_blocks', list, 'plan.')),
            metric={'name': _field(metric, 'name', str, 'metric.'),
                    'baseline': float(_field(metric, 'baseline', (int, float), 'metric.')),
                    'split': _field(metric, 'split', str, 'metric.', optional=True),
                    'n': _field(metric, 'n', int, 'metric.', optional=True)},
            strategy=_field(data, 'strategy', str),
            tokens=tokens,
            workload=dict(_field(flops, 'workload', dict, 'flops.')),
            full_flops=_field(flops, 'full', int, 'flops.'),
            rungs=rungs,
            stack=stack,
            created_by=_field(data, 'created_by', str),
            created_at=_field(data, 'created_at', str, optional=True) or '')
        try:
            ladder.runtime()                  # nesting, ranges, the plan is a rung
        except LadderError as err:
            raise PlanError(str(err)) from None
        return ladder


# ----------------------------------------------------------------------------------------------
# building

def nested_chain(trajectory: Sequence[Step]) -> list[tuple[int, ...]]:
    """Return the trajectory's removal sets, checking each strictly contains the one before."""
    chain = [tuple(sorted(step.removed)) for step in trajectory]
    for i in range(1, len(chain)):
        if not set(chain[i - 1]) < set(chain[i]):
            raise PlanError(f'trajectory step {i} removes {list(chain[i])}, not a superset of '
                            f'step {i - 1} {list(chain[i - 1])}: a ladder needs nested states')
    return chain


def build_ladder(trajectory: Sequence[Step], plan: SkipPlan, plan_id: str, score_fn: ScoreFn,
                 workload: Workload, known: Mapping[tuple[int, ...], float] | None = None,
                 extra: int = EXTRA, floor: float | None = FLOOR,
                 data: tuple[str | None, int | None, float] | None = None,
                 score_many: ScoreManyFn | None = None) -> tuple[PlanLadder, list[Candidate]]:
    """
    Return the ladder of `plan` from its search `trajectory`, and every state considered.

    `score_fn(removed)` scores a removal set with the plan's token skipping; `known` holds scores
    already measured that way (ignored when the plan has token skipping: the search scored
    without it). `data`: (split, n, baseline S(empty)) when the rungs are scored on other data
    than the plan's calibration. `score_many(sets)`, where given, scores the sets one step needs
    together (a Ray scorer runs them in parallel). See the module docstring for which states
    become rungs.
    """
    if extra < 0:
        raise PlanError(f'ladder extra rungs {extra!r} must be >= 0')
    chain = nested_chain(trajectory)
    plan_removed = tuple(sorted(plan.removed_blocks))
    if plan_removed not in chain:
        raise PlanError(f'the plan removes {list(plan_removed)}, which is no state of its '
                        'trajectory: re-run ros2-gmskip calibrate')
    tokens = TokenSkip.from_dict(plan.tokens)
    cache: dict[tuple[int, ...], float] = dict(known or {}) if tokens.is_off else {}
    split, n, baseline = data or (plan.metric.split, plan.metric.n, plan.metric.baseline)
    num_blocks = plan.model.num_blocks

    def score(removed: tuple[int, ...]) -> float:
        key = tuple(sorted(removed))
        if key not in cache:
            cache[key] = checked_score(score_fn, key, f'ladder rung removed={list(key)}')
            logger.info('ladder: removed %s -> %.4f', list(key), cache[key])
        return cache[key]

    def prefetch(sets: Sequence[tuple[int, ...]]) -> None:
        todo = [k for k in dict.fromkeys(tuple(sorted(x)) for x in sets) if k not in cache]
        if score_many is None or len(todo) < 2:
            return
        for key, value in zip(todo, score_many(todo)):
            cache[key] = checked_score(lambda _, v=value: v, key,
                                       f'ladder rung removed={list(key)}')
            logger.info('ladder: removed %s -> %.4f', list(key), cache[key])

    states = [(removed, 'trajectory') for removed in chain]
    current = chain[-1]
    protected = set(protected_blocks(num_blocks, plan.protect_first))
    remaining = [b for b in range(num_blocks) if b not in protected and b not in current]
    for _ in range(extra):
        if not remaining or len(current) + 1 >= num_blocks:
            break
        prefetch([current + (block,) for block in remaining])
        best = None
        for block in remaining:          # ties go to the later block, as in greedy
            candidate = tuple(sorted(current + (block,)))
            if best is None or score(candidate) >= score(best[1]):
                best = (block, candidate)
        block, candidate = best
        if floor is not None and score(candidate) / baseline < floor - EPS:
            logger.info('ladder: stop extending at %s (score ratio %.4f < floor %g)',
                        list(candidate), score(candidate) / baseline, floor)
            break
        states.append((candidate, 'extension'))
        remaining.remove(block)
        current = candidate

    full = workload.flops((), TokenSkip())
    prefetch([removed for removed, _ in states])
    candidates = []
    for removed, origin in reversed(states):          # fastest first
        s = score(removed)
        flops = workload.flops(removed, tokens)
        candidates.append(Candidate(LadderRung(removed_blocks=removed, score=s,
                                               score_ratio=s / baseline, flops=flops,
                                               flops_ratio=flops / full, origin=origin),
                                    kept=True))
    best_faster = -math.inf
    for c in candidates:
        is_plan = c.rung.removed_blocks == plan_removed
        if floor is not None and c.rung.score_ratio < floor - EPS and not is_plan:
            c.kept, c.why = False, f'score ratio below the floor {floor:g}'
        elif c.rung.score <= best_faster + EPS and not is_plan:
            c.kept, c.why = False, 'a faster rung scores as well'
        if c.kept:
            best_faster = max(best_faster, c.rung.score)
    ladder = PlanLadder(
        model=plan.model, plan_id=plan_id, plan_removed=plan_removed,
        metric={'name': plan.metric.name, 'baseline': baseline, 'split': split, 'n': n},
        strategy=plan.strategy, tokens=None if tokens.is_off else tokens.to_dict(),
        workload=workload.to_dict(), full_flops=full,
        rungs=[c.rung for c in candidates if c.kept], stack=plan.stack)
    ladder.runtime()                                  # the invariants hold by construction
    return ladder, candidates


def format_ladder(candidates: Sequence[Candidate], plan_removed: Sequence[int]) -> str:
    """Format the states considered as a text table: rung numbers for the kept ones."""
    plan_removed = tuple(sorted(plan_removed))
    rows = [f'{"rung":>4}  {"removed":>7}  {"S":>8}  {"S/S0":>7}  {"FLOPs":>6}  {"origin":<10}  '
            'blocks removed']
    index = 0
    for c in candidates:
        r = c.rung
        mark = '*' if r.removed_blocks == plan_removed else ' '
        label = f'{index:>3}{mark}' if c.kept else f'{"-":>3}{mark}'
        index += c.kept
        rows.append(f'{label}  {len(r.removed_blocks):>7}  {r.score:>8.4f}  '
                    f'{r.score_ratio:>7.4f}  {r.flops_ratio:>6.3f}  {r.origin:<10}  '
                    f'{list(r.removed_blocks)}' + ('' if c.kept else f'  (dropped: {c.why})'))
    return '\n'.join(rows)


# ----------------------------------------------------------------------------------------------
# files

def save_ladder(ladder: PlanLadder, path: str | os.PathLike) -> Path:
    """Write the ladder atomically (folders.write_file: a temp file beside it, renamed)."""
    path = Path(path)
    try:
        text = json.dumps(ladder.to_dict(), indent=2, allow_nan=False) + '\n'
    except (TypeError, ValueError) as err:
        raise PlanError(f'cannot write ladder {str(path)!r}: {err}') from err
    return write_file(path, text, 'plan ladder')


def load_ladder(path: str | os.PathLike, model_dir: str | os.PathLike | None = None,
                check_hash: bool = True) -> PlanLadder:
    """Read and validate a ladder; with `model_dir`, check it was made for those weights."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f'no such ladder file {str(path)!r}: ros2-gmskip calibrate writes one '
                        'beside its plan (or run ros2-gmskip ladder --plan PLAN)')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PlanError(f'ladder {path} is not valid JSON ({err}): re-run ros2-gmskip '
                        'calibrate') from None
    try:
        ladder = PlanLadder.from_dict(data)
    except PlanError as err:
        raise PlanError(f'ladder {path}: {err}') from None
    if model_dir is not None and check_hash:
        actual = weights_sha256(model_dir)
        if actual != ladder.model.sha256:
            raise PlanError(f'ladder {path} was made for model sha256 '
                            f'{ladder.model.sha256[:12]}, but {model_dir} has {actual[:12]}: '
                            'calibrate again for these weights')
    return ladder
