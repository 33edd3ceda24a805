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
The closed vocabulary of generated scenes and their ground-truth records.

Everything the renderer can draw, and every word a caption can use, is named here, so the
renderer, the caption grammar, the metrics (single-object classification) and the dataset loaders
agree on one list.
"""

from __future__ import annotations

from dataclasses import dataclass

# Object classes, in a fixed order (class index = position in this tuple).
CLASSES: tuple[str, ...] = (
    'car', 'truck', 'bus', 'pedestrian', 'cyclist', 'traffic_light', 'stop_sign', 'cone')

# The noun a caption uses for each class.
NOUNS: dict[str, str] = {
    'car': 'car', 'truck': 'truck', 'bus': 'bus', 'pedestrian': 'pedestrian',
    'cyclist': 'cyclist', 'traffic_light': 'traffic light', 'stop_sign': 'stop sign',
    'cone': 'traffic cone',
}

# Words / phrases that name each class in free text (generated captions, COCO captions, model
# output). Multi-word phrases are matched as phrases; matching is case-insensitive, on word
# boundaries. Keep the lists disjoint: a phrase must name exactly one class.
SYNONYMS: dict[str, tuple[str, ...]] = {
    'car': ('car', 'cars', 'sedan', 'sedans', 'suv', 'suvs', 'hatchback', 'hatchbacks'),
    'truck': ('truck', 'trucks', 'lorry', 'lorries'),
    'bus': ('bus', 'buses', 'busses', 'coach', 'coaches'),
    'pedestrian': ('pedestrian', 'pedestrians', 'person', 'persons', 'people', 'man', 'men',
                   'woman', 'women', 'walker', 'walkers'),
    'cyclist': ('cyclist', 'cyclists', 'bicyclist', 'bicyclists', 'biker', 'bikers',
                'bicycle', 'bicycles', 'bike', 'bikes'),
    'traffic_light': ('traffic light', 'traffic lights', 'traffic signal', 'traffic signals',
                      'stoplight', 'stoplights'),
    'stop_sign': ('stop sign', 'stop signs'),
    'cone': ('cone', 'cones', 'traffic cone', 'traffic cones', 'pylon', 'pylons'),
}

LIGHTINGS: tuple[str, ...] = ('day', 'dusk', 'night')
WEATHERS: tuple[str, ...] = ('clear', 'rain', 'fog')
POSITIONS: tuple[str, ...] = ('left', 'ahead', 'right')
DISTANCES: tuple[str, ...] = ('near', 'far')

# Colour words: vehicle paint (cars and trucks only), and traffic-light state.
VEHICLE_COLORS: tuple[str, ...] = ('red', 'blue', 'white', 'black', 'gray', 'yellow')
LIGHT_STATES: tuple[str, ...] = ('red', 'yellow', 'green')

# Classes whose `color` is a vehicle paint colour, and the one whose `color` is a light state.
COLORED_VEHICLES: tuple[str, ...] = ('car', 'truck')

# Caption words for the scene conditions.
WEATHER_WORDS: dict[str, str] = {'clear': 'clear', 'rain': 'rainy', 'fog': 'foggy'}
POSITION_WORDS: dict[str, str] = {'left': 'on the left', 'ahead': 'ahead', 'right': 'on the right'}
DISTANCE_WORDS: dict[str, str] = {'near': 'close', 'far': 'far'}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object and where it is."""

    cls: str                            # one of CLASSES
    color: str | None                   # paint (car/truck), light state (traffic_light), or None
    position: str                       # left | ahead | right
    distance: str                       # near | far
    bbox: tuple[int, int, int, int]     # x0, y0, x1, y1 in pixels (exclusive x1/y1), clipped

    def __post_init__(self) -> None:
        assert self.cls in CLASSES, f'unknown class {self.cls!r}'
        assert self.position in POSITIONS, f'unknown position {self.position!r}'
        assert self.distance in DISTANCES, f'unknown distance {self.distance!r}'

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return max(0, x1 - x0) * max(0, y1 - y0)

    @property
    def slot(self) -> tuple[str, str]:
        return self.position, self.distance

    def to_dict(self) -> dict:
        return {'cls': self.cls, 'color': self.color, 'position': self.position,
                'distance': self.distance, 'bbox': [int(v) for v in self.bbox]}

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        bbox = tuple(int(v) for v in d['bbox'])
        assert len(bbox) == 4, f'bbox needs 4 numbers, got {d["bbox"]!r}'
        return cls(cls=str(d['cls']), color=d.get('color'), position=str(d['position']),
                   distance=str(d['distance']), bbox=bbox)


@dataclass(frozen=True)
class Scene:
    """Ground truth of one rendered image."""

    seed: int
    width: int
    height: int
    lighting: str                       # one of LIGHTINGS
    weather: str                        # one of WEATHERS
    objects: tuple[SceneObject, ...]    # objects[0] is the MAIN object; the rest by area, desc.
    caption: str

    @property
    def main_class(self) -> str:
        return self.objects[0].cls

    def to_dict(self) -> dict:
        return {'seed': self.seed, 'width': self.width, 'height': self.height,
                'lighting': self.lighting, 'weather': self.weather,
                'main_class': self.main_class, 'caption': self.caption,
                'objects': [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(seed=int(d['seed']), width=int(d['width']), height=int(d['height']),
                   lighting=str(d['lighting']), weather=str(d['weather']),
                   objects=tuple(SceneObject.from_dict(o) for o in d['objects']),
                   caption=str(d['caption']))
