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
The canonical caption of a scene: one fixed grammar the model is trained to reproduce.

    phrase  = 'a ' [colour ' '] noun ' ' ('close' | 'far') ' '
              ('on the left' | 'ahead' | 'on the right')
    caption = phrase (', ' phrase)* ', ' ('clear' | 'rainy' | 'foggy') ' '
              ('day' | 'dusk' | 'night') '.'

Phrases come main object first, then by bbox area, descending.

Example: 'a red car close ahead, a pedestrian far on the left, rainy night.'
"""

from __future__ import annotations

from typing import Iterable

from ros2_gmskip.scenes.spec import (
    DISTANCE_WORDS,
    LIGHTINGS,
    NOUNS,
    POSITION_WORDS,
    SceneObject,
    WEATHER_WORDS,
    WEATHERS,
)


def phrase_for(obj: SceneObject) -> str:
    """Return the phrase for one object, e.g. 'a red car close ahead'."""
    color = f'{obj.color} ' if obj.color else ''
    return (f'a {color}{NOUNS[obj.cls]} {DISTANCE_WORDS[obj.distance]} '
            f'{POSITION_WORDS[obj.position]}')


def caption_for(lighting: str, weather: str, objects: Iterable[SceneObject]) -> str:
    """Return the caption of a scene whose objects are given main object first."""
    assert lighting in LIGHTINGS, f'unknown lighting {lighting!r}'
    assert weather in WEATHERS, f'unknown weather {weather!r}'
    phrases = [phrase_for(o) for o in objects]
    assert phrases, 'a scene caption needs at least one object'
    return ', '.join(phrases) + f', {WEATHER_WORDS[weather]} {lighting}.'
