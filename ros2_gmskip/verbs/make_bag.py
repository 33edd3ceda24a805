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
Write a rosbag2 of rendered test scenes on an Autoware camera topic.

Frames come from the `test` split of the procedural scenes (never seen in training), one per
1/fps seconds, with header stamps = bag times starting at a fixed epoch so that the same
arguments give the same bag. Each frame's ground truth (caption, objects) is written alongside
as std_msgs/String JSON on /gmskip/ground_truth (leave it out with --no-truth).

    ros2-gmskip make-bag --out bags/scenes --n 100 --fps 10
    ros2-gmskip make-bag --out bags/scenes_jpeg --n 100 --compressed --storage sqlite3
    ros2 bag info bags/scenes        # or: ros2-gmskip replay bags/scenes --out bags/descriptions

--compressed writes sensor_msgs/CompressedImage (jpeg) on `<topic>/compressed`; otherwise
sensor_msgs/Image (rgb8) on the topic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ros2_gmskip.argtypes import positive_float, positive_int

HELP = 'write a rosbag2 of rendered test scenes on an Autoware camera topic'

# Mirrors ros2_gmskip.ros.bag (not imported here: `--help` stays free of rosbags / cv2).
DEFAULT_TOPIC = '/sensing/camera/camera0/image_rect_color'
DEFAULT_FRAME_ID = 'camera0/camera_optical_link'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, required=True,
                        help='output bag folder (must not exist)')
    parser.add_argument('--n', type=positive_int, default=100, help='frames (default: 100)')
    parser.add_argument('--fps', type=positive_float, default=10.0,
                        help='frame rate of the stamps (default: 10)')
    parser.add_argument('--compressed', action='store_true',
                        help='sensor_msgs/CompressedImage (jpeg) on <topic>/compressed')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                        help='rosbag2 storage (default: mcap)')
    parser.add_argument('--topic', default=DEFAULT_TOPIC,
                        help=f'image topic (default: {DEFAULT_TOPIC})')
    parser.add_argument('--frame-id', default=DEFAULT_FRAME_ID,
                        help=f'header.frame_id (default: {DEFAULT_FRAME_ID})')
    parser.add_argument('--split', choices=('train', 'val', 'test'), default='test',
                        help='scene split the seeds come from (default: test)')
    parser.add_argument('--width', type=positive_int, default=640,
                        help='image width (default: 640)')
    parser.add_argument('--height', type=positive_int, default=480,
                        help='image height (default: 480)')
    parser.add_argument('--no-truth', action='store_true',
                        help='do not write the /gmskip/ground_truth topic')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.ros.bag import GROUND_TRUTH_TOPIC, make_bag

    summary = make_bag(args.out, n=args.n, fps=args.fps, compressed=args.compressed,
                       storage=args.storage, topic=args.topic, split=args.split,
                       frame_id=args.frame_id, progress=not args.no_progress,
                       width=args.width, height=args.height,
                       truth_topic=None if args.no_truth else GROUND_TRUTH_TOPIC)
    kind = 'CompressedImage jpeg' if summary['compressed'] else 'Image rgb8'
    truth = f' + {summary["truth_topic"]}' if summary['truth_topic'] else ''
    print(f'wrote {summary["path"]} ({summary["storage"]}): {summary["n"]} x {kind} '
          f'{summary["width"]}x{summary["height"]} at {summary["fps"]:g} fps on '
          f'{summary["topic"]}{truth}')
    return 0
