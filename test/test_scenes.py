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

"""The scene renderer: determinism, splits, caption grammar, ground-truth invariants."""

from __future__ import annotations

from collections import Counter
import re

import numpy as np
import pytest
from ros2_gmskip.scenes import (
    caption_for,
    CLASSES,
    DISTANCES,
    LIGHT_STATES,
    LIGHTINGS,
    NOUNS,
    POSITIONS,
    render_scene,
    Scene,
    SceneObject,
    split_seeds,
    SPLITS,
    SYNONYMS,
    VEHICLE_COLORS,
    WEATHERS,
)
from ros2_gmskip.scenes.spec import WEATHER_WORDS

W, H = 320, 240             # small renders keep the suite fast; the layout does not depend on size


@pytest.fixture(scope='module')
def scenes() -> list[tuple[np.ndarray, Scene]]:
    """500 val scenes rendered once for the whole module."""
    return [render_scene(seed, W, H) for seed in split_seeds('val', 500)]


def _phrase_re() -> str:
    colors = '|'.join(sorted(set(VEHICLE_COLORS) | set(LIGHT_STATES)))
    nouns = '|'.join(re.escape(NOUNS[c]) for c in CLASSES)
    return rf'a (?:(?:{colors}) )?(?:{nouns}) (?:close|far) (?:on the left|ahead|on the right)'


CAPTION_RE = re.compile(rf'^{_phrase_re()}(?:, {_phrase_re()}){{0,2}}, '
                        rf'(?:clear|rainy|foggy) (?:day|dusk|night)\.$')


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_scene():
    a_img, a_scene = render_scene(10_000_123)
    b_img, b_scene = render_scene(10_000_123)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_scene == b_scene


def test_different_seeds_differ():
    a_img, a_scene = render_scene(1, W, H)
    b_img, b_scene = render_scene(2, W, H)
    assert a_img.tobytes() != b_img.tobytes()
    assert a_scene != b_scene


def test_rendering_does_not_touch_global_rng():
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    render_scene(5, W, H)
    assert np.random.random() == expected


def test_image_shape_and_dtype():
    for w, h in ((640, 480), (128, 128), (W, H)):
        img, scene = render_scene(42, w, h)
        assert img.shape == (h, w, 3)
        assert img.dtype == np.uint8
        assert (scene.width, scene.height) == (w, h)
        assert img.std() > 5, 'image is nearly flat'


def test_too_small_size_is_refused():
    with pytest.raises(ValueError, match='too small'):
        render_scene(0, 16, 16)


# ----------------------------------------------------------------------------- splits


def test_split_ranges_do_not_overlap():
    ranges = sorted(SPLITS.values())
    for (_, stop), (start, _) in zip(ranges, ranges[1:]):
        assert stop <= start
    assert set(SPLITS) == {'train', 'val', 'test'}


def test_split_seeds():
    assert split_seeds('val', 3) == [10_000_000, 10_000_001, 10_000_002]
    assert split_seeds('test', 2, offset=5) == [20_000_005, 20_000_006]
    assert split_seeds('train', 0) == []
    start, stop = SPLITS['val']
    assert split_seeds('val', 1, offset=stop - start - 1) == [stop - 1]


def test_split_seeds_errors_name_the_split():
    with pytest.raises(ValueError, match="'nope'"):
        split_seeds('nope', 1)
    with pytest.raises(ValueError, match="'val'"):
        split_seeds('val', 100_001)
    with pytest.raises(ValueError, match="'test'"):
        split_seeds('test', 1, offset=100_000)


def test_cli_split_choices_match_splits():
    from ros2_gmskip.verbs import scenes as verb
    assert tuple(verb.SPLIT_NAMES) == tuple(SPLITS)


# ----------------------------------------------------------------------------- captions


def test_caption_example():
    objs = [SceneObject('car', 'red', 'ahead', 'near', (0, 0, 10, 10)),
            SceneObject('pedestrian', None, 'left', 'far', (0, 0, 2, 5))]
    assert caption_for('night', 'rain', objs) == \
        'a red car close ahead, a pedestrian far on the left, rainy night.'
    light = [SceneObject('traffic_light', 'green', 'right', 'far', (0, 0, 2, 6))]
    assert caption_for('day', 'fog', light) == 'a green traffic light far on the right, foggy day.'


def test_caption_grammar(scenes):
    for _, scene in scenes[:300]:
        assert CAPTION_RE.match(scene.caption), scene.caption
        phrases = scene.caption[:-1].split(', ')
        assert len(phrases) == len(scene.objects) + 1
        for obj, phrase in zip(scene.objects, phrases):
            assert NOUNS[obj.cls] in phrase
            assert phrase == caption_for(scene.lighting, scene.weather, [obj]).rsplit(', ', 1)[0]
        assert phrases[-1] == f'{WEATHER_WORDS[scene.weather]} {scene.lighting}'


def test_main_object_is_first_and_largest(scenes):
    for _, scene in scenes:
        areas = [o.area for o in scene.objects]
        assert areas == sorted(areas, reverse=True), scene
        assert scene.main_class == scene.objects[0].cls
        first = scene.caption.split(', ')[0]
        assert NOUNS[scene.main_class] in first


def test_objects_in_distinct_slots_and_inside_the_image(scenes):
    for img, scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        slots = [o.slot for o in scene.objects]
        assert len(set(slots)) == len(slots), scene
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height, o
            if o.cls in ('traffic_light', 'stop_sign'):
                assert o.slot != ('ahead', 'near'), o


def test_colours_follow_the_class(scenes):
    for _, scene in scenes:
        for o in scene.objects:
            if o.cls in ('car', 'truck'):
                assert o.color in VEHICLE_COLORS
            elif o.cls == 'traffic_light':
                assert o.color in LIGHT_STATES
            else:
                assert o.color is None


def test_near_objects_are_lower_and_bigger_than_far(scenes):
    near = [o for _, s in scenes for o in s.objects if o.distance == 'near']
    far = [o for _, s in scenes for o in s.objects if o.distance == 'far']
    assert min(o.bbox[3] for o in near) > max(o.bbox[3] for o in far)
    for cls in CLASSES:
        n_area = [o.area for o in near if o.cls == cls]
        f_area = [o.area for o in far if o.cls == cls]
        if n_area and f_area:
            assert np.median(n_area) > 3 * np.median(f_area), cls


def test_every_value_appears(scenes):
    objs = [o for _, s in scenes for o in s.objects]
    assert set(Counter(o.cls for o in objs)) == set(CLASSES)
    assert {s.main_class for _, s in scenes} == set(CLASSES)
    assert {s.lighting for _, s in scenes} == set(LIGHTINGS)
    assert {s.weather for _, s in scenes} == set(WEATHERS)
    assert {o.position for o in objs} == set(POSITIONS)
    assert {o.distance for o in objs} == set(DISTANCES)
    assert {o.color for o in objs if o.cls in ('car', 'truck')} == set(VEHICLE_COLORS)
    assert {o.color for o in objs if o.cls == 'traffic_light'} == set(LIGHT_STATES)
    counts = Counter(len(s.objects) for _, s in scenes)
    assert counts[1] > 150 and counts[2] > 150 and counts[3] > 60, counts


def test_scene_dict_round_trip(scenes):
    _, scene = scenes[0]
    d = scene.to_dict()
    assert d['main_class'] == scene.main_class
    assert Scene.from_dict(d) == scene
    for o in scene.objects:
        assert SceneObject.from_dict(o.to_dict()) == o


def test_vocabulary_is_consistent():
    assert set(NOUNS) == set(SYNONYMS) == set(CLASSES)
    seen: dict[str, str] = {}
    for cls, words in SYNONYMS.items():
        assert NOUNS[cls] in words, cls
        for word in words:
            assert word == word.lower()
            assert seen.setdefault(word, cls) == cls, f'{word!r} names two classes'
