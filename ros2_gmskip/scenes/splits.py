"""Seed ranges of the train / val / test splits; the ranges never overlap, so no image is shared."""

from __future__ import annotations

# split -> [start, stop) of its seeds.
SPLITS: dict[str, tuple[int, int]] = {
    'train': (0, 10_000_000),
    'val': (10_000_000, 10_100_000),
    'test': (20_000_000, 20_100_000),
}


def split_seeds(split: str, n: int, offset: int = 0) -> list[int]:
    """The first `n` seeds of `split`'s range after skipping `offset` of them."""
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
