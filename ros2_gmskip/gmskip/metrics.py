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
Task metrics S(R) for GM-Skip: main-object accuracy, CIDEr-D, exact match, object F1, or yours.

A metric is `f(predictions: list[str], references: list[Sample]) -> float` (higher is better);
`Sample` is `ros2_gmskip.scenes.Sample` (captions, main_class, objects).

`object_f1` reads the objects out of each text with an object parser (default: the caption
grammar of the default model, `scenes.parse`; `--object-parser module:function` for another)
and scores them against the ground-truth objects.
"""

from __future__ import annotations

from collections import Counter
import functools
import math
import re
from typing import Callable, Sequence

from ros2_gmskip.errors import MetricError
from ros2_gmskip.hooks import load_callable
from ros2_gmskip.scenes.parse import checked_objects, load_object_parser, object_key, parse_objects
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


def object_counts(predictions: Sequence[str], references: Sequence[object],
                  parser: Callable[[str], list] = parse_objects) -> tuple[int, int, int]:
    """
    Return (matched, predicted, true) object counts over the references that list objects.

    An object is matched when class, colour, position and distance all agree; repeated objects
    count as often as they appear on both sides (multiset intersection).
    """
    matched = predicted = true = 0
    for text, ref in zip(predictions, references):
        truth = getattr(ref, 'objects', None)
        if not truth:                       # no ground truth for this image: not scored
            continue
        said = Counter(object_key(o) for o in checked_objects(parser, text))
        real = Counter(object_key(o) for o in truth)
        matched += sum((said & real).values())
        predicted += sum(said.values())
        true += sum(real.values())
    return matched, predicted, true


def object_f1(predictions: Sequence[str], references: Sequence[object],
              parser: Callable[[str], list] = parse_objects) -> float:
    """
    Object-level F1: precision and recall of the described objects against the ground truth.

    Micro-averaged over the images whose reference lists objects (see `object_counts`);
    F1 = 2 P R / (P + R), 0 when nothing matches.
    """
    matched, predicted, true = object_counts(predictions, references, parser)
    if not true:
        raise MetricError('object_f1 needs references with ground-truth objects; use --metric '
                          'cider for caption-only data')
    if not matched:
        return 0.0
    precision, recall = matched / predicted, matched / true
    return 2 * precision * recall / (precision + recall)


BUILTIN: dict[str, Metric] = {'accuracy': accuracy, 'cider': cider, 'exact_match': exact_match,
                              'object_f1': object_f1}


def resolve_metric(name: str, object_parser: str = '') -> Metric:
    """
    Return the metric for a built-in name, or `module:function` for a user callable.

    `object_parser` ('' = the default caption grammar, or 'module:function') is object_f1's.
    """
    if name == 'object_f1' and object_parser:
        parser = load_object_parser(object_parser)
        if parser is None:
            raise MetricError(f'object_f1 needs an object parser, got {object_parser!r}: '
                              'leave --object-parser out or name a module:function')
        return functools.partial(object_f1, parser=parser)
    if name in BUILTIN:
        return BUILTIN[name]
    if ':' not in name:
        raise MetricError(f'unknown metric {name!r}: use one of {sorted(BUILTIN)} '
                          'or module:function')
    return load_callable(name, 'metric', MetricError)


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
