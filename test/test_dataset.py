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

"""Dataset folders: write/load round trip, plain COCO captions, one-line errors, the CLI verb."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from ros2_gmskip.errors import DatasetError, ImageError
from ros2_gmskip.scenes import (
    CLASSES,
    load_folder,
    load_samples,
    render_scene,
    Sample,
    split_seeds,
    write_folder,
)

W, H = 96, 64     # tiny images: the format, not the pixels, is under test


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp('scenes') / 'val', 'val', 4, W, H, progress=False)


def test_write_folder_layout(folder):
    doc = json.loads((folder / 'captions.json').read_text())
    assert doc['info']['generator'] == 'ros2_gmskip.scenes'
    assert (doc['info']['split'], doc['info']['width'], doc['info']['height']) == ('val', W, H)
    assert [im['id'] for im in doc['images']] == split_seeds('val', 4)
    for im in doc['images']:
        assert im['file_name'] == f'images/val_{im["id"]}.png'
        assert (folder / im['file_name']).is_file()
        assert im['main_class'] in CLASSES
        assert {'width', 'height', 'lighting', 'weather', 'objects'} <= set(im)
    assert [a['image_id'] for a in doc['annotations']] == split_seeds('val', 4)
    assert len({a['id'] for a in doc['annotations']}) == 4


def test_round_trip(folder):
    samples = load_folder(folder)
    assert len(samples) == 4
    for sample, seed in zip(samples, split_seeds('val', 4)):
        img, scene = render_scene(seed, W, H)
        assert sample.image_id == f'val_{seed}'
        assert sample.captions == [scene.caption]
        assert sample.main_class == scene.main_class
        assert sample.objects == [o.to_dict() for o in scene.objects]
        assert sample.image is None
        loaded = sample.load_image()
        assert loaded.dtype == np.uint8 and loaded.shape == (H, W, 3)
        assert np.array_equal(loaded, img)


def test_load_folder_first_n(folder):
    assert [s.image_id for s in load_folder(folder, n=2)] == \
        [f'val_{seed}' for seed in split_seeds('val', 2)]


def test_load_samples_in_memory_matches_folder(folder):
    mem = load_samples('val', 3, width=W, height=H)
    disk = load_samples(str(folder), 3)
    for a, b in zip(mem, disk):
        assert (a.image_id, a.captions, a.main_class, a.objects) == \
            (b.image_id, b.captions, b.main_class, b.objects)
        assert a.image_path is None and a.image is not None
        assert np.array_equal(a.load_image(), b.load_image())
    shifted = load_samples(str(folder), 2, offset=1)
    assert [s.image_id for s in shifted] == [s.image_id for s in disk[1:3]]
    assert load_samples('test', 1, offset=7, width=W, height=H)[0].image_id == 'test_20000007'


def test_load_samples_errors():
    with pytest.raises(DatasetError, match="'val'"):
        load_samples('val', 100_001)


def _coco(tmp_path: Path, images: list, annotations: list, name: str = 'captions.json') -> Path:
    (tmp_path / name).write_text(json.dumps({'images': images, 'annotations': annotations}))
    return tmp_path


def test_plain_coco_json_with_two_captions_per_image(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'images').mkdir()
    pixels = {}
    for image_id in (397133, 37777):
        pixels[image_id] = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels[image_id]).save(tmp_path / 'images' / f'{image_id:012d}.png')
    images = [{'id': 397133, 'file_name': '000000397133.png', 'width': 30, 'height': 20},
              {'id': 37777, 'file_name': 'images/000000037777.png', 'main_class': 'car'}]
    annotations = [{'id': 1, 'image_id': 397133, 'caption': 'A man on a bicycle. '},
                   {'id': 2, 'image_id': 37777, 'caption': 'A red car parked.'},
                   {'id': 3, 'image_id': 397133, 'caption': 'A cyclist rides down a street.'},
                   {'id': 4, 'image_id': 37777, 'caption': 'A car by the road.'}]
    samples = load_folder(_coco(tmp_path, images, annotations, 'captions_val2017.json'))
    assert [s.image_id for s in samples] == ['397133', '37777']
    assert samples[0].captions == ['A man on a bicycle.', 'A cyclist rides down a street.']
    assert samples[1].captions == ['A red car parked.', 'A car by the road.']
    assert samples[0].main_class is None and samples[1].main_class == 'car'
    assert samples[0].objects == [] and samples[1].objects == []
    for s, image_id in zip(samples, (397133, 37777)):
        assert np.array_equal(s.load_image(), pixels[image_id])
    # the json file itself may be given instead of its folder
    assert len(load_folder(tmp_path / 'captions_val2017.json')) == 2


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match='no such dataset folder'):
        load_folder(tmp_path / 'nope')


def test_folder_without_captions(tmp_path):
    with pytest.raises(DatasetError, match='no captions.json'):
        load_folder(tmp_path)


@pytest.mark.parametrize('text, reason', [
    ('{"images": [', 'invalid JSON at line 1'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"images": {}, "annotations": []}', 'expected lists'),
    ('{"images": [{"id": 1}], "annotations": []}', r'images\[0\] needs'),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1}]}',
     r'annotations\[0\] needs'),
])
def test_malformed_captions(tmp_path, text, reason):
    (tmp_path / 'captions.json').write_text(text)
    with pytest.raises(DatasetError, match=reason) as info:
        load_folder(tmp_path)
    assert 'captions.json' in str(info.value)
    assert '\n' not in str(info.value)


def test_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match='has no images'):
        load_folder(_coco(tmp_path, [], []))


def test_corrupt_png_names_the_path(tmp_path):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    with pytest.raises(ImageError, match='starts like a png file but its header') as info:
        Sample('x', [], None, [], image_path=bad).load_image()
    assert repr(str(bad)) in str(info.value) and '\n' not in str(info.value)
    missing = tmp_path / 'missing.png'
    with pytest.raises(ImageError, match=f"image '{missing}' does not exist"):
        Sample('y', [], None, [], image_path=missing).load_image()


def test_write_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="'val'"):
        write_folder(tmp_path / 'a', 'val', 100_001, progress=False)
    with pytest.raises(DatasetError, match='too small'):
        write_folder(tmp_path / 'b', 'val', 1, width=8, height=8, progress=False)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(DatasetError, match='is a file'):
        write_folder(tmp_path / 'file', 'val', 1, W, H, progress=False)


# ----------------------------------------------------------------------------- CLI verb


def _parse(argv: list[str]) -> argparse.Namespace:
    from ros2_gmskip.verbs import scenes as verb
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    return parser.parse_args(argv)


def test_verb_writes_folder_and_prints_summary(tmp_path, capsys):
    from ros2_gmskip.verbs import scenes as verb
    out = tmp_path / 'cli'
    args = _parse(['--split', 'test', '--n', '3', '--out', str(out), '--width', str(W),
                   '--height', str(H), '--offset', '2'])
    assert verb.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'wrote 3 images ({W}x{H}, test seeds 20000002..20000004) to {out}')
    assert 'main class:' in line and '\n' not in line
    seeds = split_seeds('test', 3, offset=2)
    assert [s.image_id for s in load_folder(out)] == [f'test_{seed}' for seed in seeds]


def test_verb_arguments():
    args = _parse(['--n', '5', '--out', 'x'])
    assert (args.split, args.n, args.width, args.height, args.offset) == ('val', 5, 640, 480, 0)
    for bad in (['--n', '0', '--out', 'x'],
                ['--n', '1'],
                ['--n', '1', '--out', 'x', '--offset', '-1'],
                ['--n', '1', '--out', 'x', '--split', 'dev']):
        with pytest.raises(SystemExit):
            _parse(bad)
    from ros2_gmskip import cli
    assert cli.VERBS['scenes'] == 'scenes'
