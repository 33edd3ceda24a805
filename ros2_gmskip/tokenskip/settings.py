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
Token-skip settings: the FastV and visual-KV-removal knobs as plans, bundles and runtime hold them.

Pure stdlib (no torch), so the runtime and the node can read them.

    ts = TokenSkip(fastv=FastVConfig(k=2, r=0.5), kv_ratio=1.0)
    ts.to_dict()  # {'fastv': {'k': 2, 'r': 0.5, 'seed': 0},
                  #  'kv_removal': {'ratio': 1.0, 'start_layer': 0}}
    TokenSkip.from_dict(plan.tokens)        # ValueError naming the bad field

The same dictionary is the plan's `tokens` entry (calibrate writes it, with the search it came
from under `search`) and the bundle manifest's `token_skip` entry (export copies it), so the
torch path, the ONNX bundle and the node all apply the same settings.

Which image tokens a rule keeps is defined here once, in plain Python, so the torch backend and
the numpy runtime pick exactly the same slots:
- `retained_slots(n, ratio)`: the stride rule (Skip-FFN in training and KV removal at inference):
  ceil((1-ratio) n) evenly spaced slots, starting at 0;
- `random_slots(n, n_keep, seed)`: FastV with K = 0 (no attention to rank by): a seeded random
  subset, sorted.
"""

from __future__ import annotations

from dataclasses import dataclass
import random
from typing import Any

from ros2_gmskip.tokenskip.flops import num_kept


@dataclass(frozen=True)
class FastVConfig:
    """Where and how much FastV prunes."""

    k: int = 2           # prune AFTER layer K-1: layers < K see every token, layers >= K the kept
    r: float = 0.5       # share of image tokens pruned; keeps ceil((1-R) * n_img); 0 = none
    seed: int = 0        # K = 0 only: which random subset is kept

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f'FastV K must be an integer >= 0, got {self.k!r}')
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) \
                or not 0.0 <= self.r <= 1.0:
            raise ValueError(f'FastV R must be in [0, 1], got {self.r!r}')

    def n_keep(self, n_image: int) -> int:
        """Image tokens kept out of `n_image`."""
        return num_kept(n_image, self.r)

    def active(self, num_layers: int) -> bool:
        """Return True when it prunes anything in a decoder of `num_layers` blocks."""
        return self.r > 0 and self.k < num_layers


@dataclass(frozen=True)
class TokenSkip:
    """FastV pruning in the prefill and/or visual KV removal after it (None / 0: off)."""

    fastv: FastVConfig | None = None
    kv_ratio: float = 0.0      # share of visual tokens whose KV entries are dropped after prefill
    kv_start: int = 0          # layers < kv_start keep their visual entries

    def __post_init__(self) -> None:
        if isinstance(self.kv_ratio, bool) or not isinstance(self.kv_ratio, (int, float)) \
                or not 0.0 <= self.kv_ratio <= 1.0:
            raise ValueError(f'KV removal ratio must be in [0, 1], got {self.kv_ratio!r}')
        if isinstance(self.kv_start, bool) or not isinstance(self.kv_start, int) \
                or self.kv_start < 0:
            raise ValueError(f'KV removal start_layer must be an integer >= 0, got '
                             f'{self.kv_start!r}')

    @property
    def is_off(self) -> bool:
        return (self.fastv is None or self.fastv.r == 0) and self.kv_ratio == 0

    def describe(self) -> str:
        """Short human form: 'FastV K=2 R=0.5, KV removal 100%' / 'none'."""
        parts = []
        if self.fastv is not None and self.fastv.r > 0:
            parts.append(f'FastV K={self.fastv.k} R={self.fastv.r:g}')
        if self.kv_ratio > 0:
            start = f' from layer {self.kv_start}' if self.kv_start else ''
            parts.append(f'KV removal {100 * self.kv_ratio:g}%{start}')
        return ', '.join(parts) or 'none'

    def with_overrides(self, fastv: FastVConfig | None = None, kv_ratio: float | None = None,
                       kv_start: int | None = None) -> TokenSkip:
        """
        Return these settings with the given knobs replaced (None keeps the knob).

        This is how a plan's `tokens` and command-line flags (--fastv, --kv-removal, --kv-start)
        combine.
        """
        return TokenSkip(fastv=self.fastv if fastv is None else fastv,
                         kv_ratio=self.kv_ratio if kv_ratio is None else kv_ratio,
                         kv_start=self.kv_start if kv_start is None else kv_start)

    def splits(self, num_layers: int) -> tuple[tuple[int, ...], int | None]:
        """
        Return where an exported decoder must be split for these settings, and FastV's K.

        -> (sorted block indices in 1..num_layers-1, K if FastV ranks at a split, else None).
        K = 0 needs no split (a random subset is chosen before the decoder); KV removal from layer
        s > 0 needs one at s.
        """
        points, rank_at = set(), None
        if self.fastv is not None and self.fastv.active(num_layers) and self.fastv.k > 0:
            points.add(self.fastv.k)
            rank_at = self.fastv.k
        if self.kv_ratio > 0 and 0 < self.kv_start < num_layers:
            points.add(self.kv_start)
        return tuple(sorted(points)), rank_at

    def to_dict(self) -> dict | None:
        """Return the plan / manifest entry; None when nothing is skipped."""
        if self.is_off:
            return None
        fastv = None
        if self.fastv is not None and self.fastv.r > 0:
            fastv = {'k': self.fastv.k, 'r': float(self.fastv.r), 'seed': self.fastv.seed}
        kv = ({'ratio': float(self.kv_ratio), 'start_layer': self.kv_start}
              if self.kv_ratio > 0 else None)
        return {'fastv': fastv, 'kv_removal': kv}

    @classmethod
    def from_dict(cls, data: Any) -> TokenSkip:
        """
        Read a plan's `tokens` or a manifest's `token_skip` (None: off).

        Extra keys (the calibration record) are ignored; a malformed entry raises ValueError
        naming the field.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f'tokens must be an object or null, got {type(data).__name__}')
        fastv = data.get('fastv')
        kv = data.get('kv_removal')
        try:
            fv = None
            if fastv is not None:
                if not isinstance(fastv, dict) or 'k' not in fastv or 'r' not in fastv:
                    raise ValueError(f'fastv must be {{"k": int, "r": float}}, got '
                                     f'{fastv!r}')
                fv = FastVConfig(k=fastv['k'], r=fastv['r'], seed=int(fastv.get('seed', 0)))
            ratio, start = 0.0, 0
            if kv is not None:
                if not isinstance(kv, dict) or 'ratio' not in kv:
                    raise ValueError(f'kv_removal must be {{"ratio": float}}, got {kv!r}')
                ratio, start = kv['ratio'], kv.get('start_layer', 0)
            return cls(fastv=fv, kv_ratio=ratio, kv_start=start)
        except (TypeError, ValueError) as err:
            raise ValueError(f'tokens: {err}') from None


def resolve_token_skip(plan: TokenSkip | dict | None, fastv: FastVConfig | None = None,
                       kv_ratio: float | None = None, kv_start: int | None = None,
                       use_plan: bool = True) -> TokenSkip:
    """
    Return the token settings a plan's `tokens` and per-run overrides give: the one merge rule.

    `plan`: the plan's settings (a TokenSkip or its `tokens` entry; None: none); `use_plan`
    False ignores them (--no-plan-tokens); each override not None replaces its knob.
    """
    base = TokenSkip()
    if use_plan and plan is not None:
        base = plan if isinstance(plan, TokenSkip) else TokenSkip.from_dict(plan)
    return base.with_overrides(fastv, kv_ratio, kv_start)


def parse_fastv(text: str) -> FastVConfig:
    """'K,R' (e.g. '2,0.5') -> FastVConfig; ValueError with the expected form."""
    parts = [p.strip() for p in str(text).split(',')]
    if len(parts) != 2:
        raise ValueError(f'expected K,R (e.g. 2,0.5), got {text!r}')
    try:
        k, r = int(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f'expected K,R with an integer K and a ratio R (e.g. 2,0.5), got '
                         f'{text!r}') from None
    return FastVConfig(k=k, r=r)


def retained_slots(n: int, ratio: float) -> list[int]:
    """
    Return the image-token slots (0..n-1) kept by the stride rule.

    ceil((1-ratio) n) evenly spaced, starting at slot 0 (n = 64, ratio = 0.75 -> 0, 4, 8, ..., 60).
    """
    n_keep = num_kept(n, ratio)
    return [i * n // n_keep for i in range(n_keep)]


def random_slots(n: int, n_keep: int, seed: int) -> list[int]:
    """Choose `n_keep` of the slots 0..n-1 by `seed`, sorted (FastV with K = 0)."""
    return sorted(random.Random(seed).sample(range(n), n_keep))
