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
Read the objects back out of a caption: the inverse of `scenes.captions`.

    parse_caption('a red car close ahead, a pedestrian far on the left, rainy night.')
    # ParsedCaption(objects=({'cls': 'car', 'color': 'red', 'position': 'ahead',
    #                         'distance': 'near'}, {'cls': 'pedestrian', ...}),
    #               weather='rain', lighting='night', unparsed=())

Model output is not always grammatical (a cut-off last phrase, a repeated word), so parsing is
per phrase: every comma-separated phrase that matches the phrase grammar gives an object, the
scene conditions are read where they match, and the rest is kept in `unparsed`. Objects use the
keys and values of `SceneObject.to_dict()` (without the bbox), so they compare directly with the
ground truth of a scene, a dataset folder or the /gmskip/ground_truth topic of a bag.

`parse_objects(text) -> list[dict]` is the default object parser of the node (`~/output/scene`
`objects`) and of the `object_f1` metric. Another caption grammar plugs in as a `module:function`
with the same signature (node parameter `object_parser`, CLI `--object-parser`), loaded by
`load_object_parser`.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Callable

from ros2_gmskip.errors import GmSkipError
from ros2_gmskip.hooks import load_callable
from ros2_gmskip.scenes.spec import (
    DISTANCE_WORDS, LIGHT_STATES, LIGHTINGS, NOUNS, POSITION_WORDS, VEHICLE_COLORS, WEATHER_WORDS)

ObjectParser = Callable[[str], list]

OBJECT_KEYS = ('cls', 'color', 'position', 'distance')
DEFAULT_PARSER = ''                  # '' = this module's grammar (node parameter object_parser)
NO_PARSER = 'none'                   # objects stay empty


def _alternatives(words) -> str:
    """Return a regex group of `words`, longest first (so 'traffic cone' wins over 'cone')."""
    return '|'.join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_CLASS_OF_NOUN = {noun: cls for cls, noun in NOUNS.items()}
_DISTANCE_OF = {word: d for d, word in DISTANCE_WORDS.items()}
_POSITION_OF = {word: p for p, word in POSITION_WORDS.items()}
_WEATHER_OF = {word: w for w, word in WEATHER_WORDS.items()}
_PHRASE = re.compile(
    rf'an? (?:(?P<color>{_alternatives(VEHICLE_COLORS + LIGHT_STATES)}) )?'
    rf'(?P<noun>{_alternatives(NOUNS.values())}) (?P<distance>{_alternatives(_DISTANCE_OF)}) '
    rf'(?P<position>{_alternatives(_POSITION_OF)})')
_CONDITIONS = re.compile(
    rf'(?P<weather>{_alternatives(_WEATHER_OF)}) (?P<lighting>{_alternatives(LIGHTINGS)})')


@dataclass(frozen=True)
class ParsedCaption:
    """What a caption says: its objects in order, the scene conditions, and what did not parse."""

    objects: tuple[dict, ...]
    weather: str | None = None       # one of spec.WEATHERS
    lighting: str | None = None      # one of spec.LIGHTINGS
    unparsed: tuple[str, ...] = ()   # phrases matching neither grammar rule


def parse_caption(text: str) -> ParsedCaption:
    """Parse a caption of the default grammar, phrase by phrase (see the module docstring)."""
    objects: list[dict] = []
    weather = lighting = None
    unparsed: list[str] = []
    for raw in str(text).lower().replace('.', ',').split(','):
        phrase = ' '.join(raw.split())
        if not phrase:
            continue
        match = _PHRASE.fullmatch(phrase)
        if match:
            objects.append({'cls': _CLASS_OF_NOUN[match['noun']], 'color': match['color'],
                            'position': _POSITION_OF[match['position']],
                            'distance': _DISTANCE_OF[match['distance']]})
            continue
        match = _CONDITIONS.fullmatch(phrase)
        if match and weather is None:
            weather, lighting = _WEATHER_OF[match['weather']], match['lighting']
            continue
        unparsed.append(phrase)
    return ParsedCaption(tuple(objects), weather, lighting, tuple(unparsed))


def parse_objects(text: str) -> list[dict]:
    """Return the objects ({cls, color, position, distance}) a default-grammar caption names."""
    return list(parse_caption(text).objects)


def object_key(obj: dict) -> tuple:
    """Return (cls, color, position, distance) of an object dict: what two objects must share."""
    return tuple(obj.get(k) for k in OBJECT_KEYS)


def load_object_parser(spec: str) -> ObjectParser | None:
    """
    Return the object parser `spec` names: '' the default grammar, 'none' no parser.

    Otherwise `spec` is 'module:function' with function(text) -> list of object dicts.
    """
    if spec == DEFAULT_PARSER:
        return parse_objects
    if spec == NO_PARSER:
        return None
    return load_callable(spec, 'object parser', ParserError)


class ParserError(GmSkipError):
    """An object parser cannot be loaded, or returned something else than a list of dicts."""


def checked_objects(parser: ObjectParser, text: str, name: str = 'object parser') -> list[dict]:
    """Run `parser` on `text`; ParserError in one line if it raises or returns non-dicts."""
    try:
        objects = parser(text)
    except Exception as err:  # noqa: BLE001 - user code may raise anything
        raise ParserError(f'{name} raised {type(err).__name__}: {err}') from err
    if not isinstance(objects, (list, tuple)) or not all(isinstance(o, dict) for o in objects):
        raise ParserError(f'{name} returned {type(objects).__name__}: expected a list of dicts '
                          f'with keys {", ".join(OBJECT_KEYS)}')
    return [dict(o) for o in objects]
