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

"""Seed ranges of the train / val / test splits: they never overlap, so no image is shared."""

from __future__ import annotations

# split -> [start, stop) of its seeds.
SPLITS: dict[str, tuple[int, int]] = {
    'train': (0, 10_000_000),
    'val': (10_000_000, 10_100_000),
    'test': (20_000_000, 20_100_000),
}


def split_seeds(split: str, n: int, offset: int = 0) -> list[int]:
    """Return the first `n` seeds of `split`'s range after skipping `offset` of them."""
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}: expected one of {", ".join(SPLITS)}')
    if n < 0 or offset < 0:
        raise ValueError(f'split {split!r}: n and offset must be >= 0, got n={n}, '
                         f'offset={offset}')
    start, stop = SPLITS[split]
    if start + offset + n > stop:
        raise ValueError(f'split {split!r} has {stop - start} seeds; offset {offset} + n {n} '
                         f'exceeds it')
    return list(range(start + offset, start + offset + n))
