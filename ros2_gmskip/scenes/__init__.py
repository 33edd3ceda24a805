"""Procedural driving scenes with ground truth, and COCO-captions-style dataset folders.

    from ros2_gmskip.scenes import render_scene, load_samples
    img, scene = render_scene(10_000_000)           # RGB uint8 (480, 640, 3), Scene
    samples = load_samples('val', n=64)              # rendered in memory from the val seeds
"""

from __future__ import annotations

from ros2_gmskip.scenes.captions import caption_for
from ros2_gmskip.scenes.dataset import Sample, load_folder, load_samples, write_folder
from ros2_gmskip.scenes.render import render_scene
from ros2_gmskip.scenes.spec import (
    CLASSES, DISTANCES, LIGHT_STATES, LIGHTINGS, NOUNS, POSITIONS, SYNONYMS, VEHICLE_COLORS,
    WEATHERS, Scene, SceneObject)
from ros2_gmskip.scenes.splits import SPLITS, split_seeds

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
