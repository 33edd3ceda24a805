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
The token-skip search: FastV K/R and visual KV removal, tuned on the block-pruned model.

    from ros2_gmskip.gmskip.token_search import Workload, search_tokens
    result = search_tokens(lambda ts: evaluator.score(plan_removed, tokens=ts),
                           baseline=s_empty, block_score=s_plan, removed_blocks=plan_removed,
                           workload=Workload(dims, n_tokens=80, n_image=64, new_tokens=14),
                           ks=[1, 2, 3], rs=[0.25, 0.5, 0.75], kv_ratios=[0, 1],
                           objective=Objective(lam=0.3, min_score_ratio=0.95))
    result.best.setting          # TokenSkip(fastv=FastVConfig(k=2, r=0.5), kv_ratio=1.0)

Why a second search after the block plan: block skipping and token skipping save compute in
different places (fewer layers vs fewer tokens per layer), and their losses compound. Tuning the
token knobs on the model the plan has already pruned measures exactly the model that export and
the node will run, and costs one grid of evaluations instead of a joint search.

Candidates are the grid ({FastV off} + {(K, R)}) x kv_ratios. K counts the blocks that REMAIN
after the block plan (FastV runs on the pruned model); K >= remaining blocks prunes nothing and is
skipped, as is R = 0 (the same model as FastV off). The candidate "no token skipping" is always
first in the trajectory; its score is the block plan's own score S(plan), so it costs no
evaluation.

Objective, per candidate T:

    J(T) = S(T) / S(empty) + lam * (1 - FLOPs(T) / FLOPs(plan))

S(empty) is the UNPRUNED model's baseline, so `min_score_ratio` (the same floor as the block
search) bounds the total loss of blocks and tokens together. FLOPs are the decoder estimate of a
whole generation (tokenskip/flops.py: prefill + decode steps) for the calibration prompt length,
its image tokens and the mean number of tokens the block-pruned model generated; every candidate
is costed at that same length, so a candidate that stops early is not rewarded for it. The setting
chosen is argmax J over the feasible candidates, ties going to fewer FLOPs; with none feasible,
no token skipping.

Torch-free (like strategies.py): the score is a callback, so the logic is testable with a fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ros2_gmskip.errors import PlanError
from ros2_gmskip.gmskip.objective import EPS, Objective
from ros2_gmskip.gmskip.scoring import checked_score
from ros2_gmskip.tokenskip.flops import DecoderDims, generation_flops
from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip

FLOPS_REFERENCE = 'formula 4nd^2+2n^2d+2ndm per layer (tokenskip/flops.py)'

TokenScoreFn = Callable[[TokenSkip], float]


@dataclass(frozen=True)
class Workload:
    """What one calibration description costs in the FLOPs estimate."""

    dims: DecoderDims       # the FULL decoder (GM-Skip removal is applied on top)
    n_tokens: int           # prompt tokens, image tokens included
    n_image: int            # image tokens in the prompt
    new_tokens: int         # generated tokens per description (the block plan's mean)

    def flops(self, removed_blocks: Iterable[int], setting: TokenSkip) -> int:
        """Estimated decoder FLOPs of one generation with blocks removed and `setting`."""
        return generation_flops(self.dims, self.n_tokens, self.n_image, self.new_tokens,
                                removed_blocks, setting.fastv, setting.kv_ratio,
                                setting.kv_start)

    def to_dict(self) -> dict:
        return {'prompt_tokens': self.n_tokens, 'image_tokens': self.n_image,
                'new_tokens': self.new_tokens}


@dataclass
class TokenStep:
    """One evaluated token setting on the block-pruned model."""

    setting: TokenSkip
    score: float             # S(plan, T)
    score_ratio: float       # S(plan, T) / S(empty): against the UNPRUNED model
    flops_ratio: float       # FLOPs(plan, T) / FLOPs(plan)
    objective: float         # J(T)
    feasible: bool           # meets the score floor

    @property
    def k(self) -> int | None:
        return self.setting.fastv.k if self.setting.fastv is not None else None

    @property
    def r(self) -> float | None:
        return self.setting.fastv.r if self.setting.fastv is not None else None

    def to_dict(self) -> dict:
        return {'k': self.k, 'r': self.r, 'kv_ratio': float(self.setting.kv_ratio),
                'score': self.score, 'score_ratio': self.score_ratio,
                'flops_ratio': self.flops_ratio, 'objective': self.objective,
                'feasible': self.feasible}


@dataclass
class TokenSearchResult:
    """What the token search evaluated and what it chose."""

    baseline: float                  # S(empty) of the unpruned model
    block_score: float               # S(plan) without token skipping
    trajectory: list[TokenStep]      # every candidate, "no token skipping" first
    best: TokenStep
    evaluations: int                 # score_fn calls
    workload: Workload
    objective: Objective = field(default_factory=Objective)

    def to_record(self) -> dict:
        """Return the plan's `tokens` entry: the chosen setting plus the search it came from."""
        chosen = self.best.setting.to_dict() or {'fastv': None, 'kv_removal': None}
        return {**chosen, 'search': {
            'lambda': self.objective.lam,
            'min_score_ratio': self.objective.min_score_ratio,
            'baseline': self.baseline,
            'block_plan_score': self.block_score,
            'flops_reference': FLOPS_REFERENCE,
            'workload': self.workload.to_dict(),
            'trajectory': [step.to_dict() for step in self.trajectory],
            'evaluations': self.evaluations,
        }}


def candidates(ks: Sequence[int], rs: Sequence[float], kv_ratios: Sequence[float],
               remaining_blocks: int) -> list[TokenSkip]:
    """
    Return the grid ({FastV off} + {(K, R)}) x kv_ratios, "no token skipping" first.

    Drops what cannot prune anything (K >= remaining blocks, R = 0: FastV off) and duplicates.
    """
    fastvs: list[FastVConfig | None] = [None]
    fastvs += [FastVConfig(k=int(k), r=float(r)) for k in ks for r in rs
               if int(k) < remaining_blocks and r > 0]
    out: list[TokenSkip] = [TokenSkip()]
    seen = {_key(out[0])}
    for fastv in fastvs:
        for kv in kv_ratios:
            setting = TokenSkip(fastv=fastv, kv_ratio=float(kv))
            if _key(setting) not in seen:
                seen.add(_key(setting))
                out.append(setting)
    return out


def _key(setting: TokenSkip) -> tuple:
    """Identity of a setting by what it does (R = 0 is the same as FastV off)."""
    fastv = setting.fastv
    active = fastv is not None and fastv.r > 0
    return ((fastv.k, fastv.r) if active else None, setting.kv_ratio, setting.kv_start)


def search_tokens(score_fn: TokenScoreFn, baseline: float, block_score: float,
                  removed_blocks: Sequence[int], workload: Workload,
                  ks: Sequence[int] = (1, 2, 3), rs: Sequence[float] = (0.25, 0.5, 0.75),
                  kv_ratios: Sequence[float] = (0.0, 1.0), objective: Objective = Objective(),
                  progress: bool = True) -> TokenSearchResult:
    """Evaluate every token setting on the block-pruned model; see the module docstring."""
    removed = sorted(int(b) for b in removed_blocks)
    remaining = workload.dims.layers - len(removed)
    if remaining < 1:
        raise PlanError(f'the block plan removes all {workload.dims.layers} blocks: no decoder '
                        'left to skip tokens in')
    if workload.n_image < 1:
        raise PlanError('the calibration prompt has no image tokens: nothing for token '
                        'skipping to prune')
    objective.ratio(block_score, baseline)       # MetricError now if the baseline is not positive
    grid = candidates(ks, rs, kv_ratios, remaining)
    reference = workload.flops(removed, TokenSkip())

    def make_step(setting: TokenSkip, score: float) -> TokenStep:
        ratio = objective.ratio(score, baseline)
        flops_ratio = workload.flops(removed, setting) / reference
        floor = objective.min_score_ratio
        return TokenStep(setting=setting, score=score, score_ratio=ratio, flops_ratio=flops_ratio,
                         objective=ratio + objective.lam * (1.0 - flops_ratio),
                         feasible=floor is None or ratio >= floor - EPS)

    trajectory = [make_step(grid[0], block_score)]
    bar = _progress_bar(len(grid) - 1, enabled=progress)
    try:
        for setting in grid[1:]:
            trajectory.append(make_step(setting, _checked(score_fn, setting)))
            if bar is not None:
                bar.set_postfix(setting=setting.describe(), refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return TokenSearchResult(baseline=baseline, block_score=block_score, trajectory=trajectory,
                             best=choose_best(trajectory), evaluations=len(grid) - 1,
                             workload=workload, objective=objective)


def choose_best(trajectory: list[TokenStep]) -> TokenStep:
    """Argmax J over the feasible steps; ties -> fewer FLOPs; none feasible -> the first (off)."""
    feasible = [s for s in trajectory if s.feasible]
    if not feasible:
        return trajectory[0]
    return max(feasible, key=lambda s: (round(s.objective, 9), -round(s.flops_ratio, 12)))


def _checked(score_fn: TokenScoreFn, setting: TokenSkip) -> float:
    """score_fn(setting) as a finite float; anything else is a one-line MetricError."""
    return checked_score(score_fn, setting, f'tokens {setting.describe()}')


def _progress_bar(total: int, enabled: bool):
    if not enabled or total < 1:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc='token search', unit='eval', leave=False)
