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

"""Shared argparse `type=` validators: each names the bad value and what is expected."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def _number(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str,
            name: str) -> Callable[[str], float]:
    """Return a validator: `cast(text)` must succeed and pass `ok`, else 'expected <expected>'."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):          # NaN fails every comparison: rejected
            raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}')
        return value
    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = _number(int, lambda v: v > 0, 'a positive integer', 'positive_int')
non_negative_int = _number(int, lambda v: v >= 0, 'an integer >= 0', 'non_negative_int')
fraction = _number(float, lambda v: 0.0 <= v <= 1.0, 'a number in [0, 1]', 'fraction')
non_negative_float = _number(float, lambda v: 0.0 <= v < float('inf'), 'a number >= 0',
                             'non_negative_float')
positive_float = _number(float, lambda v: 0.0 < v < float('inf'), 'a number > 0',
                         'positive_float')


def comma_list(item: Callable[[str], object], expected: str, name: str
               ) -> Callable[[str], list]:
    """
    Return a validator for 'a,b,c' that parses every item with the validator `item`.

    Duplicates are dropped, order kept (a search grid need not evaluate a value twice).
    """
    def parse(text: str) -> list:
        values: list = []
        for part in text.split(','):
            try:
                value = item(part.strip())
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f'expected a comma-separated list of {expected}, got {text!r}') from None
            if value not in values:
                values.append(value)
        return values
    parse.__name__ = parse.__qualname__ = name
    return parse


int_list = comma_list(non_negative_int, 'integers >= 0 (e.g. 1,2,3)', 'int_list')
fraction_list = comma_list(fraction, 'numbers in [0, 1] (e.g. 0.25,0.5)', 'fraction_list')


def fastv_setting(text: str):
    """
    Parse 'K,R' (e.g. '2,0.5') into a tokenskip.settings.FastVConfig.

    Anything else is a one-line argparse error (an R out of [0, 1] or a missing R is caught
    here, not after loading a model).
    """
    from ros2_gmskip.tokenskip.settings import parse_fastv
    try:
        return parse_fastv(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def node_param(key: str) -> Callable[[str], object]:
    """
    Return a validator for an option that is also a node parameter (`--draft-tokens` ...).

    Type and bounds come from schema/gmskip.schema.json, the one source for both: a value the
    node refuses, the command line refuses too, with the same words.
    """
    def parse(text: str):
        from ros2_gmskip.ros.params import ParameterError, parse_value
        try:
            return parse_value(key, text)
        except ParameterError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = parse.__qualname__ = key
    return parse


def frame_size(text: str) -> tuple[int, int]:
    """Parse a frame size HEIGHTxWIDTH (e.g. `480x640`) into (height, width)."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH in pixels (e.g. 480x640), got '
                                         f'{text!r}')
    return int(parts[0]), int(parts[1])


def existing_dir(text: str) -> Path:
    path = Path(text)
    if path.is_file():
        raise argparse.ArgumentTypeError(f'{text!r} is a file, not a folder')
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f'no such folder {text!r}')
    return path


def existing_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'{text!r} is a folder, not a file')
    if not path.is_file():
        raise argparse.ArgumentTypeError(f'no such file {text!r}')
    return path


def count_or_fraction(text: str) -> int | float:
    """Parse a count (integer >= 0, e.g. `4`) or a fraction in [0, 1) (e.g. `0.25`)."""
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


def rung_choice(text: str) -> str:
    """`--rung`: 'auto' or a rung number (checked against the ladder once it is loaded)."""
    if text == 'auto' or (text.isdigit() and len(text) <= 3):
        return text
    raise argparse.ArgumentTypeError(f'expected auto or a rung number (0 = fastest), got {text!r}')
