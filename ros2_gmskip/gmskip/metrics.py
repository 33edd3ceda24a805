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
Task metrics S(R) for GM-Skip: main-object accuracy, CIDEr-D, exact match, or a user callable.

A metric is `f(predictions: list[str], references: list[Sample]) -> float` (higher is better);
`Sample` is `ros2_gmskip.scenes.Sample` (captions, main_class, objects).
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable, Sequence

from ros2_gmskip.errors import MetricError
from ros2_gmskip.scenes.spec import SYNONYMS

Metric = Callable[[Sequence[str], Sequence[object]], float]
_PUNCT = re.compile(r'[^\w\s]')


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, single spaces: the PTB-style tokenisation COCO eval uses."""
    return ' '.join(_PUNCT.sub(' ', text.lower()).split())


def names_class(text: str, cls: str) -> bool:
    """Return True if `text` names `cls` or one of its synonyms as whole words."""
    words = f' {normalize(text)} '
    return any(f' {normalize(s)} ' in words for s in SYNONYMS[cls])


def accuracy(predictions: Sequence[str], references: Sequence[object]) -> float:
    """
    Return the share of images whose generated text names the main object's class (or synonym).

    Single-object classification accuracy: the GM-Skip paper's COCO metric.
    """
    pairs = [(p, r.main_class) for p, r in zip(predictions, references) if r.main_class]
    if not pairs:
        raise MetricError('accuracy needs references with a main_class; use --metric cider '
                          'for caption-only data')
    return sum(names_class(p, c) for p, c in pairs) / len(pairs)


def exact_match(predictions: Sequence[str], references: Sequence[object]) -> float:
    """Share of predictions equal (after normalisation) to one of their reference captions."""
    if not predictions:
        raise MetricError('exact_match of an empty prediction list')
    return sum(normalize(p) in {normalize(c) for c in r.captions}
               for p, r in zip(predictions, references)) / len(predictions)


def cider(predictions: Sequence[str], references: Sequence[object]) -> float:
    """
    Score CIDEr-D (Vedantam et al. 2015) with pycocoevalcap's scorer.

    Document frequencies come from the references of this evaluation set, as in the COCO caption
    evaluation.
    """
    from pycocoevalcap.cider.cider import Cider
    if not predictions:
        raise MetricError('cider of an empty prediction list')
    gts = {i: [normalize(c) for c in r.captions] for i, r in enumerate(references)}
    res = {i: [normalize(p)] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


BUILTIN: dict[str, Metric] = {'accuracy': accuracy, 'cider': cider, 'exact_match': exact_match}


def resolve_metric(name: str) -> Metric:
    """Return the metric for a built-in name, or `module:function` for a user callable."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ':' not in name:
        raise MetricError(f'unknown metric {name!r}: use one of {sorted(BUILTIN)} '
                          'or module:function')
    module_name, func_name = name.split(':', 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise MetricError(f'cannot import metric {name!r}: {err}') from err
    if not callable(func):
        raise MetricError(f'metric {name!r} is not callable')
    return func


def checked(metric: Metric, name: str) -> Metric:
    """Wrap a metric so that exceptions and non-finite values become one-line MetricErrors."""
    def run(predictions, references) -> float:
        try:
            value = float(metric(predictions, references))
        except MetricError:
            raise
        except Exception as err:  # noqa: BLE001 - user code may raise anything
            raise MetricError(f'metric {name!r} raised {type(err).__name__}: {err}') from err
        if not math.isfinite(value):
            raise MetricError(f'metric {name!r} returned {value} (not a finite number)')
        return value
    return run
