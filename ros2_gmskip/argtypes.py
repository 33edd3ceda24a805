"""Shared argparse `type=` validators: each names the bad value and what is expected."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {text!r}')
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text!r}') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text!r}')
    return value


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f'no such folder {text!r}')
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'no such file {text!r}')
    return path


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < float('inf'):
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {text!r}')
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'expected a number > 0, got {text!r}')
    return value


def count_or_fraction(text: str) -> int | float:
    """A count (integer >= 0, e.g. `4`) or a fraction in [0, 1) (e.g. `0.25`)."""
    error = argparse.ArgumentTypeError(
        f'expected a block count >= 0 or a fraction in [0, 1), got {text!r}')
    try:
        value = float(text)
    except ValueError:
        raise error from None
    if value.is_integer() and value >= 0 and '.' not in text and 'e' not in text.lower():
        return int(value)
    if 0.0 <= value < 1.0:
        return value
    raise error


def model_dir_or_default(path: Path | None) -> Path:
    """`--model` as given, else the embedded default model (ModelLoadError if it is missing)."""
    if path is not None:
        return Path(path)
    from ros2_gmskip.errors import ModelLoadError
    from ros2_gmskip.runtime.defaults import default_model_dir
    default = default_model_dir()
    if not default.is_dir():
        raise ModelLoadError(f'the default model {str(default)!r} is missing: train it with '
                             'ros2-gmskip train, or pass --model DIR')
    return default
