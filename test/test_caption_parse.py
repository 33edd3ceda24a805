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

"""scenes.parse: the inverse of the caption grammar, and the hook for other grammars."""

from __future__ import annotations

import itertools

import pytest

from ros2_gmskip.scenes import render_scene, split_seeds
from ros2_gmskip.scenes.captions import caption_for
from ros2_gmskip.scenes.parse import (
    checked_objects, load_object_parser, OBJECT_KEYS, parse_caption, parse_objects, ParserError)
from ros2_gmskip.scenes.spec import (
    CLASSES, COLORED_VEHICLES, DISTANCES, LIGHT_STATES, LIGHTINGS, POSITIONS, SceneObject,
    VEHICLE_COLORS, WEATHERS)


def truth(objects) -> tuple[dict, ...]:
    return tuple({k: o.to_dict()[k] for k in OBJECT_KEYS} for o in objects)


def every_object():
    """Every object the grammar can say: class x its colours x position x distance."""
    for cls, position, distance in itertools.product(CLASSES, POSITIONS, DISTANCES):
        colors = (VEHICLE_COLORS if cls in COLORED_VEHICLES
                  else LIGHT_STATES if cls == 'traffic_light' else (None,))
        for color in colors:
            yield SceneObject(cls, color, position, distance, (0, 0, 1, 1))


def test_every_phrase_and_condition_round_trips():
    objects = list(every_object())
    assert len(objects) == 120          # (6 + 6 + 3 + 5 x 1 colours) x 6 slots
    for lighting, weather in itertools.product(LIGHTINGS, WEATHERS):
        for i in range(0, len(objects), 3):
            group = objects[i:i + 3]
            parsed = parse_caption(caption_for(lighting, weather, group))
            assert parsed.objects == truth(group)
            assert (parsed.weather, parsed.lighting, parsed.unparsed) == (weather, lighting, ())


def test_round_trip_on_two_thousand_rendered_scenes():
    for seed in split_seeds('val', 2000):
        _, scene = render_scene(seed, 32, 32)
        parsed = parse_caption(scene.caption)
        assert parsed.objects == truth(scene.objects), scene.caption
        assert (parsed.weather, parsed.lighting) == (scene.weather, scene.lighting)
        assert parsed.unparsed == ()


def test_model_output_that_is_not_grammatical_is_parsed_phrase_by_phrase():
    parsed = parse_caption('A  Red car close ahead, a stop sign far on the right, a red car '
                           'close ahead, a tra')
    assert [o['cls'] for o in parsed.objects] == ['car', 'stop_sign', 'car']
    assert parsed.objects[0] == {'cls': 'car', 'color': 'red', 'position': 'ahead',
                                 'distance': 'near'}
    assert parsed.unparsed == ('a tra',) and parsed.weather is None
    assert parse_caption('').objects == ()
    assert parse_objects('foggy dusk.') == []
    assert parse_caption('foggy dusk.').weather == 'fog'
    # 'traffic cone' is one noun, not a colourless 'cone' after 'traffic'
    assert parse_objects('a traffic cone far on the left.')[0]['cls'] == 'cone'


def test_load_object_parser_default_none_and_user_function():
    assert load_object_parser('') is parse_objects
    assert load_object_parser('none') is None
    assert load_object_parser('ros2_gmskip.scenes.parse:parse_objects') is parse_objects
    for spec, message in (('nocolon', 'not module:function'),
                          ('no_such_module_x:f', 'cannot import object parser'),
                          ('ros2_gmskip.scenes.parse:OBJECT_KEYS', 'not a function')):
        with pytest.raises(ParserError, match=message) as excinfo:
            load_object_parser(spec)
        assert '\n' not in str(excinfo.value)


def test_checked_objects_names_a_bad_parser():
    assert checked_objects(parse_objects, 'a bus far ahead.')[0]['cls'] == 'bus'
    with pytest.raises(ParserError, match='raised ZeroDivisionError'):
        checked_objects(lambda text: 1 / 0, 'x')
    with pytest.raises(ParserError, match='returned str: expected a list of dicts'):
        checked_objects(lambda text: text, 'x')
