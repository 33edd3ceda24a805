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
Render procedural driving scenes into a COCO-captions-style folder.

Each image comes with its ground truth: a canonical caption, the main object's class and the
object list (class, colour, position, distance, bbox). Splits use disjoint seed ranges, so train,
val and test never share an image; the same split, offset and size always give the same bytes.

Writes OUT/images/<split>_<seed>.png and OUT/captions.json.

usage examples:
  ros2-gmskip scenes --split val --n 500 --out data/scenes_val
  ros2-gmskip scenes --split train --n 20000 --offset 20000 --out data/scenes_train_b
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ros2_gmskip.argtypes import non_negative_int, positive_int

HELP = 'render procedural driving scenes into a COCO-captions-style folder'

SPLIT_NAMES = ('train', 'val', 'test')      # keep in step with scenes.splits.SPLITS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--split', choices=SPLIT_NAMES, default='val',
                        help='seed range to draw from (default: %(default)s)')
    parser.add_argument('--n', type=positive_int, required=True,
                        help='number of images to render')
    parser.add_argument('--out', type=Path, required=True,
                        help='output folder (created; an existing captions.json is replaced)')
    parser.add_argument('--width', type=positive_int, default=640,
                        help='image width in pixels (default: %(default)s)')
    parser.add_argument('--height', type=positive_int, default=480,
                        help='image height in pixels (default: %(default)s)')
    parser.add_argument('--offset', type=non_negative_int, default=0,
                        help='skip this many seeds of the split first (default: %(default)s)')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.scenes import CLASSES, load_folder, SPLITS, write_folder

    out = write_folder(args.out, args.split, args.n, width=args.width, height=args.height,
                       progress=True, offset=args.offset)
    counts = Counter(s.main_class for s in load_folder(out))
    hist = ', '.join(f'{c} {counts[c]}' for c in CLASSES if counts[c])
    first = SPLITS[args.split][0] + args.offset
    print(f'wrote {args.n} images ({args.width}x{args.height}, {args.split} seeds '
          f'{first}..{first + args.n - 1}) to {out}; main class: {hist}')
    return 0
