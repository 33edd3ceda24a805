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
Procedural driving scenes with ground truth, and COCO-captions-style dataset folders.

    from ros2_gmskip.scenes import render_scene, load_samples
    img, scene = render_scene(10_000_000)           # RGB uint8 (480, 640, 3), Scene
    samples = load_samples('val', n=64)              # rendered in memory from the val seeds
"""

from __future__ import annotations

from ros2_gmskip.scenes.captions import caption_for
from ros2_gmskip.scenes.dataset import load_folder, load_samples, Sample, write_folder
from ros2_gmskip.scenes.render import render_scene
from ros2_gmskip.scenes.spec import (
    CLASSES,
    DISTANCES,
    LIGHT_STATES,
    LIGHTINGS,
    NOUNS,
    POSITIONS,
    Scene,
    SceneObject,
    SYNONYMS,
    VEHICLE_COLORS,
    WEATHERS,
)
from ros2_gmskip.scenes.splits import split_seeds, SPLITS

__all__ = [
    'CLASSES',
    'DISTANCES',
    'LIGHTINGS',
    'LIGHT_STATES',
    'NOUNS',
    'POSITIONS',
    'SPLITS',
    'SYNONYMS',
    'Sample',
    'Scene',
    'SceneObject',
    'VEHICLE_COLORS',
    'WEATHERS',
    'caption_for',
    'load_folder',
    'load_samples',
    'render_scene',
    'split_seeds',
    'write_folder',
]
