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
Samples for training, calibration and evaluation: rendered in memory or read from a folder.

A folder is COCO-captions style, so our own scenes and a real COCO subset load the same way:

    OUT/images/<split>_<seed>.png
    OUT/captions.json   {"info": {...}, "images": [{"id", "file_name", "width", "height",
                         "lighting", "weather", "main_class", "objects"}, ...],
                         "annotations": [{"id", "image_id", "caption"}, ...]}

`load_folder` also reads a plain COCO captions json (images[] + annotations[], any number of
captions per image; per-image `main_class` / `objects` are optional). Images are read lazily by
`Sample.load_image`.

    write_folder(Path('/tmp/val'), 'val', n=500)
    samples = load_samples('/tmp/val', n=100)      # or load_samples('val', n=100): in memory
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from ros2_gmskip.errors import DatasetError, ImageError
from ros2_gmskip.images import read_image_file
from ros2_gmskip.scenes.render import render_scene
from ros2_gmskip.scenes.splits import split_seeds, SPLITS

log = logging.getLogger(__name__)

GENERATOR = 'ros2_gmskip.scenes'
CAPTIONS_FILE = 'captions.json'
IMAGES_DIR = 'images'
PNG_COMPRESS_LEVEL = 3      # zlib level: 3 writes ~2x faster than the default 6, files ~10% larger


@dataclass
class Sample:
    """One image with its reference captions and (where known) its ground truth."""

    image_id: str
    captions: list[str]                     # reference captions (1 for our scenes; COCO has 5)
    main_class: str | None                  # None where the dataset has no such label
    objects: list[dict] = field(default_factory=list)   # SceneObject.to_dict() items
    image_path: Path | None = None
    image: np.ndarray | None = None         # in-memory RGB uint8 (generated samples)

    def load_image(self) -> np.ndarray:
        """RGB uint8 (H, W, 3): the in-memory pixels, or the file decoded."""
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise ImageError(f'cannot read image {self.image_id!r}: the sample has neither '
                             f'pixels nor a file path')
        return read_image_file(self.image_path)    # the one image reader (pixel limit, depth)


def _check_size(width: int, height: int) -> None:
    if width < 32 or height < 32:
        raise DatasetError(f'image size {width}x{height} too small: use at least 32x32')


def _seeds(split: str, n: int, offset: int) -> list[int]:
    try:
        return split_seeds(split, n, offset)
    except ValueError as err:
        raise DatasetError(str(err)) from err


def write_folder(out: Path, split: str, n: int, width: int = 640, height: int = 480,
                 progress: bool = True, offset: int = 0) -> Path:
    """
    Render `n` scenes of `split` (from its `offset`-th seed) into a COCO-captions folder.

    Writes OUT/images/<split>_<seed>.png and OUT/captions.json; returns out. The folder appears
    complete or not at all (folders.written_in_place), replacing an earlier scenes folder there;
    a non-empty folder without a captions.json is refused, not replaced.
    """
    from tqdm import tqdm

    from ros2_gmskip.folders import check_writable, written_in_place

    out = Path(out)
    _check_size(width, height)
    seeds = _seeds(split, n, offset)
    if out.exists() and not out.is_dir():
        raise DatasetError(f'output {str(out)!r} is a file: pass a folder path to --out')
    if out.is_dir() and any(out.iterdir()) and not (out / CAPTIONS_FILE).is_file():
        raise DatasetError(f'output {str(out)!r} is a non-empty folder without {CAPTIONS_FILE}: '
                           'pass a new folder (an earlier scenes folder is replaced)')
    check_writable(out, '--out')
    with written_in_place(out, '--out') as tmp:
        return _render_into(tmp, out, split, seeds, width, height, progress, tqdm)


def _render_into(tmp: Path, out: Path, split: str, seeds: list[int], width: int, height: int,
                 progress: bool, tqdm) -> Path:
    """Render `seeds` into the folder `tmp` (moved to `out` by the caller); return out."""
    (tmp / IMAGES_DIR).mkdir()
    images, annotations = [], []
    for seed in tqdm(seeds, desc=f'scenes {split}', unit='img', disable=not progress):
        img, scene = render_scene(seed, width, height)
        file_name = f'{IMAGES_DIR}/{split}_{seed}.png'
        Image.fromarray(img).save(tmp / file_name, compress_level=PNG_COMPRESS_LEVEL)
        images.append({'id': seed, 'file_name': file_name, 'width': width, 'height': height,
                       'lighting': scene.lighting, 'weather': scene.weather,
                       'main_class': scene.main_class,
                       'objects': [o.to_dict() for o in scene.objects]})
        annotations.append({'id': len(annotations), 'image_id': seed, 'caption': scene.caption})
    doc = {'info': {'generator': GENERATOR, 'split': split, 'width': width, 'height': height,
                    'seeds': [seeds[0], seeds[-1] + 1] if seeds else [],
                    'description': 'procedural driving scenes, COCO captions format'},
           'images': images, 'annotations': annotations}
    (tmp / CAPTIONS_FILE).write_text(json.dumps(doc, separators=(',', ':')))
    log.info('wrote %d images of split %s to %s', len(images), split, out)
    return out


def _find_captions(path: Path) -> Path:
    """Return the captions json of a dataset: `path`, path/captions.json, or a lone *.json."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f'no such dataset folder {str(path)!r}: render one with '
                           f'`ros2-gmskip scenes --out {path}` or pass a COCO captions folder')
    candidate = path / CAPTIONS_FILE
    if candidate.is_file():
        return candidate
    others = sorted(path.glob('*.json'))
    if len(others) == 1:
        return others[0]
    raise DatasetError(f'no {CAPTIONS_FILE} in {str(path)!r}: expected a folder written by '
                       f'`ros2-gmskip scenes` or one with a COCO captions json')


def _image_path(root: Path, file_name: str) -> Path:
    """Where an image lives: root/file_name, else root/images/file_name (COCO layouts vary)."""
    first = root / file_name
    if first.exists():
        return first
    second = root / IMAGES_DIR / file_name
    return second if second.exists() else first


def load_folder(path: Path, n: int | None = None) -> list[Sample]:
    """
    Load the samples of a COCO-captions folder (ours or plain COCO), in file order.

    With `n`, only the first `n` of them.
    """
    path = Path(path)
    json_path = _find_captions(path)
    root = json_path.parent

    def bad(reason: str) -> DatasetError:
        return DatasetError(f'malformed captions file {str(json_path)!r}: {reason}')

    try:
        doc = json.loads(json_path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as err:
        raise bad(f'invalid JSON at line {err.lineno} column {err.colno}: {err.msg}') from err
    except (OSError, UnicodeDecodeError) as err:
        raise bad(str(err)) from err
    if not isinstance(doc, dict):
        raise bad(f'expected a JSON object with images[] and annotations[], '
                  f'got {type(doc).__name__}')
    images, annotations = doc.get('images'), doc.get('annotations', [])
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise bad('expected lists under "images" and "annotations"')
    ours = isinstance(doc.get('info'), dict) and doc['info'].get('generator') == GENERATOR

    captions: dict[object, list[str]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or 'image_id' not in ann or \
                not isinstance(ann.get('caption'), str):
            raise bad(f'annotations[{i}] needs "image_id" and a string "caption"')
        captions.setdefault(ann['image_id'], []).append(ann['caption'].strip())

    samples = []
    for i, entry in enumerate(images):
        if not isinstance(entry, dict) or 'id' not in entry or \
                not isinstance(entry.get('file_name'), str):
            raise bad(f'images[{i}] needs "id" and a string "file_name"')
        objects = entry.get('objects') or []
        if not isinstance(objects, list):
            raise bad(f'images[{i}].objects must be a list')
        main_class = entry.get('main_class')
        samples.append(Sample(
            image_id=Path(entry['file_name']).stem if ours else str(entry['id']),
            captions=captions.get(entry['id'], []),
            main_class=str(main_class) if main_class is not None else None,
            objects=objects,
            image_path=_image_path(root, entry['file_name'])))
        if n is not None and len(samples) >= n:
            break
    if not samples:
        raise DatasetError(f'dataset {str(path)!r} has no images: its {json_path.name} lists '
                           f'none; render some with `ros2-gmskip scenes --out {path}`')
    missing = sum(1 for s in samples if not s.captions)
    if missing:
        log.warning('%d of %d images in %s have no caption', missing, len(samples), json_path)
    if n is not None and len(samples) < n:
        log.warning('asked for %d samples, %s has only %d', n, path, len(samples))
    return samples


def load_samples(data: str, n: int, offset: int = 0, width: int = 640,
                 height: int = 480) -> list[Sample]:
    """
    `n` samples: a split name renders them in memory from its seeds; else a folder is read.

    `width`/`height` apply to rendered splits only. Memory: 0.9 MB per 640x480 sample.
    """
    if data in SPLITS:
        _check_size(width, height)
        samples = []
        for seed in _seeds(data, n, offset):
            img, scene = render_scene(seed, width, height)
            samples.append(Sample(image_id=f'{data}_{seed}', captions=[scene.caption],
                                  main_class=scene.main_class,
                                  objects=[o.to_dict() for o in scene.objects], image=img))
        return samples
    if offset < 0:
        raise DatasetError(f'offset must be >= 0, got {offset}')
    samples = load_folder(Path(data), n=n + offset)[offset:]
    if not samples:
        raise DatasetError(f'dataset {data!r} has no images after offset {offset}: '
                           f'use a smaller offset')
    return samples
