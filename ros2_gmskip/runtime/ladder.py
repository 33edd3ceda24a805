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
Plan ladders at run time: the rungs a backend can run, and the chooser that picks one per frame.

A ladder is a list of nested skip plans of one model, fastest first: rung 0 removes the most
decoder blocks, and every next rung removes a strict subset of the previous rung's blocks (so it
keeps more blocks: slower, and by calibration more accurate). One rung is the plan calibrate chose
(`plan_rung`): what runs when no latency budget is set. The file format (`*.ladder.json`, written
by calibrate) lives in gmskip/ladder.py; this module only needs its `rungs` and `plan` entries, so
the node reads a ladder without the search code.

The chooser, on the worker thread, once per frame:

    rung = chooser.next_rung()               # which rung this frame runs
    result = backend.describe(image, prompt, max_new_tokens, rung=rung)
    chooser.record(rung, processing_ms)

1. Warm-up: one priming frame per rung, deepest first (not measured: each rung's graphs have
   first-run costs), then `warmup_frames` rounds over every rung, deepest first (round-robin:
   a load that changes during the warm-up hits every rung alike). A rung's cost is then
   modelled as a line in the decoder blocks it keeps (`blocks`; a deeper rung runs a superset
   of a shallower one's blocks, and what it adds costs the same per block), fitted to the
   rungs' warm-up medians: 5 frames per rung give medians too noisy to order rungs 10% apart,
   a line through all of them does not. It starts on the deepest rung whose p90 is predicted
   to fit the budget (rung 0 when none does): its modelled cost times the p90 of every warm-up
   frame over its rung's modelled cost (the spread).
2. Down: once `min_samples` frames ran on the current rung since it was entered, when its recent
   frames (the last `window`) show that its p90 exceeds the budget, it moves to the deepest
   faster rung predicted to fit: the current p90 times that rung's warm-up median over the
   current rung's (load slows every rung alike). Rung 0 when none is predicted to fit. "Show"
   is a test, not the p90 of a few frames: a rung whose p90 sits at the budget has 10% of its
   frames over it, and 20 frames have 2 or more over it 61% of the time, so a raw 20-frame p90
   would leave a rung that fits on every other check. Down needs more frames over the budget
   than a rung at its p90 would give by chance (binomial tail below `alpha`): 3 of the first 5,
   5 of 10, 7 of 20 at the default 0.01; a load that slows every frame past the budget is seen
   within 7 frames (3 right after a switch).
3. Up: after `dwell` frames on the current rung (and at least `window`), when the next deeper
   rung's p90, predicted from the frames since it entered this rung (the last 5 windows: a
   20-frame p90 is too noisy to climb on), is at most (1 - room) x budget, one rung up. Down on
   "over", up only on "clearly under": the gap between the two is the hysteresis.
4. No flapping: a rung that has to be left downward within `window` frames of being entered
   upward doubles the dwell needed to try it again (up to `MAX_PENALTY` x); a stay of two windows
   on it resets that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
import statistics
import threading
from typing import Any, Sequence

from ros2_gmskip.errors import PlanError
from ros2_gmskip.runtime.stats import percentiles

AUTO = 'auto'
MAX_PENALTY = 32


class LadderError(PlanError):
    """A ladder is malformed, or the rung / budget asked for does not fit the backend's ladder."""


@dataclass(frozen=True)
class Rung:
    """One rung: the decoder blocks it removes and how it scored in calibration."""

    index: int                       # 0 = fastest (most blocks removed)
    removed_blocks: tuple[int, ...]  # sorted block indices of the full model
    score: float | None = None       # calibration score S(R) of this rung (val split)
    flops_ratio: float | None = None  # estimated decoder FLOPs / the unpruned model's

    def to_dict(self) -> dict[str, Any]:
        return {'index': self.index, 'blocks_removed': list(self.removed_blocks),
                'val_score': self.score}


@dataclass(frozen=True)
class Ladder:
    """The rungs of one model, fastest first, and which of them is the calibrated plan."""

    rungs: tuple[Rung, ...]
    plan_rung: int
    num_blocks: int

    @property
    def top(self) -> int:
        """Index of the deepest rung (fewest blocks removed)."""
        return len(self.rungs) - 1

    @classmethod
    def from_rungs(cls, removed: Sequence[Sequence[int]], num_blocks: int,
                   plan_removed: Sequence[int], scores: Sequence[float | None] | None = None,
                   flops_ratios: Sequence[float | None] | None = None) -> Ladder:
        """Check nesting and ranges (LadderError naming the rung) and build the ladder."""
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise LadderError(f'num_blocks {num_blocks!r} must be an integer >= 1')
        if not removed:
            raise LadderError('the ladder has no rungs: re-run ros2-gmskip calibrate')
        rungs = []
        for i, blocks in enumerate(removed):
            if not isinstance(blocks, (list, tuple)):
                raise LadderError(f'rung {i}: removed_blocks {blocks!r} is not a list')
            for b in blocks:
                if isinstance(b, bool) or not isinstance(b, int):
                    raise LadderError(f'rung {i}: removed_blocks holds {b!r}: expected block '
                                      'indices (integers)')
                if not 0 <= b < num_blocks:
                    raise LadderError(f'rung {i}: removed block {b} out of range: the model '
                                      f'has {num_blocks} blocks (0..{num_blocks - 1})')
            if len(set(blocks)) != len(blocks):
                raise LadderError(f'rung {i}: removed_blocks {list(blocks)} lists a block twice')
            if len(blocks) == num_blocks:
                raise LadderError(f'rung {i} removes all {num_blocks} blocks: keep at least one')
            if i and not set(blocks) < set(removed[i - 1]):
                raise LadderError(f'rung {i} removes {sorted(blocks)}, not a strict subset of '
                                  f'rung {i - 1} {sorted(removed[i - 1])}: rungs must be nested, '
                                  'fastest first')
            rungs.append(Rung(index=i, removed_blocks=tuple(sorted(blocks)),
                              score=None if scores is None else scores[i],
                              flops_ratio=None if flops_ratios is None else flops_ratios[i]))
        plan = tuple(sorted(plan_removed))
        matches = [r.index for r in rungs if r.removed_blocks == plan]
        if not matches:
            raise LadderError(f'the plan removes {list(plan)}, which is no rung of the ladder: '
                              're-run ros2-gmskip calibrate')
        return cls(rungs=tuple(rungs), plan_rung=matches[0], num_blocks=num_blocks)

    @classmethod
    def from_dict(cls, data: Any) -> Ladder:
        """Read the `model`, `plan` and `rungs` entries of a ladder document (the file's JSON)."""
        try:
            rungs = data['rungs']
            return cls.from_rungs([r['removed_blocks'] for r in rungs],
                                  data['model']['num_blocks'], data['plan']['removed_blocks'],
                                  [r.get('score') for r in rungs],
                                  [r.get('flops_ratio') for r in rungs])
        except (KeyError, TypeError) as err:
            raise LadderError(f'malformed ladder ({type(err).__name__}: {err})') from None

    def resolve(self, rung: str | int) -> int | None:
        """Return the index of a fixed `rung` (a number), None for 'auto'; LadderError if bad."""
        if rung == AUTO:
            return None
        text = str(rung)
        if not text.isdigit() or int(text) > self.top:
            raise LadderError(f'rung {rung!r} is not in this ladder: use auto or a number '
                              f'0..{self.top} (0 = fastest, {self.top} = deepest; the plan is '
                              f'{self.plan_rung})')
        return int(text)


def p90(values: Sequence[float]) -> float:
    """Return the 90th percentile as the node's statistics compute it (stats.py); NaN if none."""
    return percentiles(values, (90,))['p90']


def cost_line(blocks: Sequence[int], medians: Sequence[float]) -> list[float]:
    """
    Return the least-squares line through (blocks kept, median ms) at each rung's `blocks`.

    The slope is at least 0 (a rung that keeps more blocks is not cheaper), every value at
    least 1% of the mean median (a line must not predict a free rung).
    """
    n = len(blocks)
    mx, my = sum(blocks) / n, sum(medians) / n
    sxx = sum((x - mx) ** 2 for x in blocks)
    slope = max(sum((x - mx) * (y - my) for x, y in zip(blocks, medians)) / sxx, 0.0) \
        if sxx else 0.0
    return [max(my + slope * (x - mx), 0.01 * my) for x in blocks]


def over_p90(times: Sequence[float], budget_ms: float, alpha: float) -> bool:
    """
    Return whether `times` show a p90 over `budget_ms`: more of them over it than chance allows.

    If the p90 were at the budget, each frame would be over it with probability 0.1; True when
    the chance of at least this many over is below `alpha` (binomial upper tail).
    """
    n, k = len(times), sum(t > budget_ms for t in times)
    tail = sum(math.comb(n, i) * 0.1 ** i * 0.9 ** (n - i) for i in range(k, n + 1))
    return k > 0 and tail < alpha


class RungChooser:
    """Pick the deepest rung whose processing time fits `budget_ms` (see the module docstring)."""

    def __init__(self, num_rungs: int, budget_ms: float, warmup_frames: int = 5,
                 window: int = 20, min_samples: int = 5, room: float = 0.05, dwell: int = 10,
                 alpha: float = 0.01, prime: bool = True,
                 blocks: Sequence[int] | None = None) -> None:
        if not (math.isfinite(budget_ms) and budget_ms > 0):
            raise ValueError(f'latency budget {budget_ms!r} ms must be > 0 (0 turns the chooser '
                             'off: run a fixed rung instead)')
        if num_rungs < 1 or warmup_frames < 1 or min_samples < 1 or window < min_samples:
            raise ValueError('need num_rungs, warmup_frames, min_samples >= 1 and window >= '
                             'min_samples')
        self.num_rungs = num_rungs
        self.budget_ms = float(budget_ms)
        self.window, self.min_samples, self.room, self.dwell = window, min_samples, room, dwell
        self.alpha = alpha
        self._lock = threading.Lock()
        top = num_rungs - 1
        # (rung, measured?) per warm-up frame: priming first, then deepest to fastest
        deepest_first = range(top, -1, -1)
        self._schedule: deque[tuple[int, bool]] = deque(
            [(r, False) for r in deepest_first] if prime else [])
        self._schedule.extend([(r, True) for _ in range(warmup_frames) for r in deepest_first])
        self._warm: list[list[float]] = [[] for _ in range(num_rungs)]
        self.blocks = list(range(1, num_rungs + 1)) if blocks is None else list(blocks)
        if len(self.blocks) != num_rungs or any(
                a >= b for a, b in zip(self.blocks, self.blocks[1:])):
            raise ValueError(f'blocks {self.blocks} must give each of the {num_rungs} rungs its '
                             'kept block count, increasing')
        self.reference_ms: list[float] = [math.nan] * num_rungs   # modelled cost per rung
        self.current = top
        self._stay: deque[float] = deque(maxlen=5 * window)     # since entering (up decisions)
        self._since_switch = 0
        self._entered_up = False
        self._penalty = [1] * num_rungs
        self.switches = 0
        self.over_budget = False
        self.reason = 'warm-up'

    # ------------------------------------------------------------------------------------------

    @property
    def warming_up(self) -> bool:
        with self._lock:
            return bool(self._schedule)

    def next_rung(self) -> int:
        """Return the rung the next frame should run."""
        with self._lock:
            return self._schedule[0][0] if self._schedule else self.current

    def record(self, rung: int, ms: float) -> None:
        """Take the processing time of a frame that ran `rung`; maybe switch rungs."""
        with self._lock:
            if self._schedule:
                expected, measured = self._schedule[0]
                if rung != expected:
                    return
                self._schedule.popleft()
                if measured:
                    self._warm[rung].append(float(ms))
                if not self._schedule:
                    self._start()
                return
            if rung != self.current:
                return
            self._stay.append(float(ms))
            self._since_switch += 1
            self._decide()

    def set_budget(self, budget_ms: float) -> None:
        """Change the budget (a live parameter change); the next frames decide against it."""
        if not (math.isfinite(budget_ms) and budget_ms > 0):
            raise ValueError(f'latency budget {budget_ms!r} ms must be > 0')
        with self._lock:
            self.budget_ms = float(budget_ms)
            self.reason = f'budget set to {budget_ms:g} ms'

    def state(self) -> dict[str, Any]:
        """Return the chooser's state for diagnostics (mode, rung, recent p90, switches, why)."""
        with self._lock:
            return {'mode': 'warm-up' if self._schedule else AUTO,
                    'rung': self._schedule[0][0] if self._schedule else self.current,
                    'p90_ms': p90(self._recent()), 'switches': self.switches,
                    'over_budget': self.over_budget, 'reason': self.reason}

    # ------------------------------------------------------------------------------------------

    def _start(self) -> None:
        """End of warm-up: the deepest rung whose warm-up p90 fits the budget."""
        self.reference_ms = cost_line(self.blocks, [statistics.median(w) for w in self._warm])
        spread = p90([t / ref for w, ref in zip(self._warm, self.reference_ms) for t in w])
        predicted = [spread * ref for ref in self.reference_ms]
        fits = [r for r in range(self.num_rungs) if predicted[r] <= self.budget_ms]
        rung = max(fits, default=0)
        self.over_budget = not fits
        self.reason = (f'warm-up: rung {rung} p90 {predicted[rung]:.1f} ms (predicted) '
                       + ('fits' if fits else 'is over') + f' the {self.budget_ms:g} ms budget')
        self._enter(rung, up=False)

    def _enter(self, rung: int, up: bool) -> None:
        if rung != self.current:
            self.switches += 1
        self.current = rung
        self._stay.clear()
        self._since_switch = 0
        self._entered_up = up

    def _recent(self) -> list[float]:
        """Return the last `window` frames on the current rung (the down decisions' sample)."""
        return list(self._stay)[-self.window:]

    def _predicted(self, rung: int, p90_now: float) -> float:
        """p90 of `rung` under the current load: p90 now scaled by the warm-up cost ratio."""
        return p90_now * self.reference_ms[rung] / max(self.reference_ms[self.current], 1e-9)

    def _decide(self) -> None:
        recent = self._recent()
        if len(recent) < self.min_samples:
            return
        now = p90(recent)
        cur = self.current
        if over_p90(recent, self.budget_ms, self.alpha):
            if cur == 0:
                self.over_budget = True
                self.reason = (f'over budget on the fastest rung: p90 {now:.1f} ms > '
                               f'{self.budget_ms:g} ms')
                return
            target = max((r for r in range(cur) if self._predicted(r, now) <= self.budget_ms),
                         default=0)
            if self._entered_up and self._since_switch < self.window:
                self._penalty[cur] = min(self._penalty[cur] * 2, MAX_PENALTY)
            self.reason = f'down: rung {cur} p90 {now:.1f} ms > {self.budget_ms:g} ms'
            self._enter(target, up=False)
            return
        self.over_budget = False
        if self._since_switch >= 2 * self.window:
            self._penalty[cur] = 1
        if (cur < self.num_rungs - 1 and len(self._stay) >= self.window
                and self._since_switch >= self.dwell * self._penalty[cur + 1]):
            predicted = self._predicted(cur + 1, p90(list(self._stay)))
            if predicted <= (1.0 - self.room) * self.budget_ms:
                self.reason = (f'up: rung {cur + 1} predicted p90 {predicted:.1f} ms <= '
                               f'{1.0 - self.room:.0%} of {self.budget_ms:g} ms')
                self._enter(cur + 1, up=True)


def rung_policy(ladder: Ladder | None, budget_ms: float, rung: str | int,
                **chooser_options: Any) -> tuple[RungChooser | None, int | None]:
    """
    Return (chooser, fixed rung) for the node's `latency_budget_ms` and `rung` parameters.

    auto + budget > 0: a chooser; auto + budget 0: the plan's rung; a number: that rung (the
    budget then only shows in diagnostics). Without a ladder only auto + 0 is valid: (None, None).
    """
    if ladder is None:
        if budget_ms > 0 or rung != AUTO:
            what = (f'latency_budget_ms {budget_ms:g}' if budget_ms > 0 else f'rung {rung!r}')
            raise LadderError(f'{what} needs a backend that runs a plan ladder, and this one has '
                              'none: give a plan with a ladder beside it (calibrate writes '
                              '<plan>.ladder.json) and a backend that can switch rungs, or set '
                              'latency_budget_ms 0 and rung auto')
        return None, None
    fixed = ladder.resolve(rung)
    if fixed is not None:
        return None, fixed
    if budget_ms > 0:
        kept = [ladder.num_blocks - len(r.removed_blocks) for r in ladder.rungs]
        return RungChooser(len(ladder.rungs), budget_ms, blocks=kept, **chooser_options), None
    return None, ladder.plan_rung
