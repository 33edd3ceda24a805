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

"""Metrics agree with values computed by hand."""

import math

import pytest
from ros2_gmskip.errors import MetricError
from ros2_gmskip.gmskip.metrics import (
    accuracy,
    checked,
    cider,
    exact_match,
    names_class,
    normalize,
    resolve_metric,
)
from ros2_gmskip.scenes import Sample


def ref(caption, main_class=None):
    return Sample(image_id='x', captions=[caption], main_class=main_class, objects=[])


def test_normalize_strips_punctuation_and_case():
    assert normalize('A Red car, close ahead.') == 'a red car close ahead'


def test_names_class_uses_whole_words_and_synonyms():
    assert names_class('a person far on the left', 'pedestrian')
    assert names_class('a red traffic light far ahead', 'traffic_light')
    assert not names_class('a scar on the road', 'car')          # whole words only
    assert not names_class('a bus close ahead', 'car')


def test_accuracy_by_hand():
    refs = [ref('a', 'car'), ref('b', 'bus'), ref('c', 'cone'), ref('d', None)]
    preds = ['a red car close ahead', 'a truck far on the left', 'a traffic cone', 'anything']
    assert accuracy(preds, refs) == pytest.approx(2 / 3)       # the unlabelled one is skipped


def test_accuracy_needs_labels():
    with pytest.raises(MetricError, match='main_class'):
        accuracy(['a car'], [ref('a car')])


def test_exact_match_by_hand():
    refs = [ref('a red car close ahead, clear day.'), ref('a bus far ahead, rainy night.')]
    assert exact_match(['A red car close ahead clear day', 'a bus far ahead'], refs) == 0.5


def test_cider_by_hand():
    """
    Check CIDEr-D against a value worked out by hand: 5.0.

    Two images whose references share no n-gram: every n-gram has idf log(2). A prediction
    equal to its reference has cosine 1 for n = 1..4 and no length penalty -> 10; a prediction
    sharing nothing -> 0. CIDEr-D is the mean: 5.0.
    """
    refs = [ref('a red car close ahead clear day'), ref('two yellow buses waiting there now')]
    preds = ['a red car close ahead clear day', 'nothing matches in this one']
    assert cider(preds, refs) == pytest.approx(5.0, abs=1e-6)


def test_cider_length_penalty_lowers_score():
    refs = [ref('a red car close ahead clear day'), ref('two yellow buses waiting there now')]
    full = cider(['a red car close ahead clear day', 'x y z w'], refs)
    short = cider(['a red car close ahead', 'x y z w'], refs)
    assert 0 < short < full


def test_resolve_and_checked_metrics():
    assert resolve_metric('cider') is cider
    assert resolve_metric('math:fsum')                      # module:function
    with pytest.raises(MetricError, match='unknown metric'):
        resolve_metric('bleu9')
    with pytest.raises(MetricError, match='cannot import'):
        resolve_metric('no_such_module_xyz:f')
    nan_metric = checked(lambda p, r: math.nan, 'nanny')
    with pytest.raises(MetricError, match='nanny.*not a finite'):
        nan_metric([], [])

    def boom(p, r):
        raise ZeroDivisionError('x')
    with pytest.raises(MetricError, match='raised ZeroDivisionError'):
        checked(boom, 'boom')([], [])
