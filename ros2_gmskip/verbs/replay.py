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
Describe the camera frames of a rosbag2; write what the gmskip_describer node publishes to a bag.

Reads any rosbag2 (sqlite3 or MCAP; sensor_msgs/Image or CompressedImage), runs the frames through
the node's pipeline (newest-frame hand-off, one worker, diagnostics) and writes OUT with
/gmskip_describer/output/description, /gmskip_describer/output/scene (JSON), /diagnostics (one per
second of bag time), /gmskip_describer/debug/*_ms (Float64Stamped) and the input's ground truth
(/gmskip/ground_truth) when it has one. Input images are not copied.

    ros2-gmskip make-bag --out bags/scenes --n 100
    ros2-gmskip replay bags/scenes --out bags/scenes_described
    ros2-gmskip replay drive.mcap --out drive_described --rate realtime --storage sqlite3 --json
    ros2-gmskip replay bags/scenes --out out --backend torch --full

--rate max (default): every frame is described, in order; nothing is dropped.
--rate realtime: frames arrive at the pace of their bag timestamps; frames that arrive while the
model is busy are dropped and counted, as in the live node.

--latency-budget-ms MS (a plan with a ladder beside it; onnxruntime / tensorrt export it once as
a ladder bundle, or take a --bundle exported with --ladder): as the node's parameter, each frame
runs the deepest rung of the plan ladder whose p90 processing time fits MS; --rung N runs one
rung. The summary counts the frames per rung.

A truncated or corrupt bag is replayed up to the damage: a warning, exit 0, and "bag_error" in the
summary. Frames that cannot be decoded are rejected and counted. With --json the last stdout line
is the summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Any

from ros2_gmskip.argtypes import node_param, non_negative_float, rung_choice
from ros2_gmskip.verbs.describe import add_backend_arguments, backend_from_args

HELP = 'describe the frames of a rosbag2 through the node pipeline; write outputs to a new bag'

# Mirrors ros2_gmskip.ros.replay.RATES / bag.STORAGES (not imported: `--help` stays light).
RATES = ('max', 'realtime')
STORAGES = ('mcap', 'sqlite3')
STAGE_NAMES = {
    'preprocess_ms': 'preprocess',
    'vision_ms': 'vision',
    'prefill_ms': 'prefill',
    'decode_per_token_ms': 'decode/token',
    'total_ms': 'total',
    'processing_time_ms': 'processing',
    'pipeline_latency_ms': 'pipeline',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('in_bag', type=Path, metavar='IN_BAG',
                        help='rosbag2 folder, or its .mcap / .db3 file')
    parser.add_argument('--out', type=Path, required=True,
                        help='output bag folder (must not exist)')
    parser.add_argument('--topic', default=None,
                        help="image topic (default: the bag's only Image / CompressedImage topic)")
    parser.add_argument('--rate', choices=RATES, default='max',
                        help='max: every frame, as fast as possible (default); realtime: at the '
                             "bag's pace, newest frame wins, drops counted")
    parser.add_argument('--storage', choices=STORAGES, default='mcap',
                        help='output bag storage (default: mcap)')
    add_backend_arguments(parser)
    parser.add_argument('--latency-budget-ms', type=non_negative_float, default=0.0,
                        help="processing-time budget per frame: run the plan ladder's deepest "
                             'rung whose p90 fits it (<plan>.ladder.json, or a --bundle '
                             'exported with --ladder); '
                             '0 = off (default)')
    parser.add_argument('--rung', type=rung_choice, default='auto',
                        help='plan-ladder rung: auto (from the budget) or a number, 0 = fastest '
                             '(default: auto)')
    parser.add_argument('--object-parser', type=node_param('object_parser'), default='',
                        metavar='MODULE:FUNCTION',
                        help="how the scene output's objects are read from the text: the default "
                             "model's caption grammar (default), 'none', or a function(text) -> "
                             'list of {cls, color, position, distance} dicts')
    parser.add_argument('--json', action='store_true',
                        help='print the summary as one JSON object on the last line')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_fake_backend_argument(parser)


def add_fake_backend_argument(parser: argparse.ArgumentParser) -> None:
    """Hidden test hook: `--fake-backend-ms MS` uses the factory's 'fake:MS' backend (no model)."""
    parser.add_argument('--fake-backend-ms', type=non_negative_float, default=None,
                        help=argparse.SUPPRESS)


def make_backend(args: argparse.Namespace) -> Any:
    """Return the backend the options ask for (the fake one with --fake-backend-ms)."""
    if getattr(args, 'fake_backend_ms', None) is not None:
        from ros2_gmskip.runtime.factory import create_backend
        return create_backend(f'fake:{args.fake_backend_ms:g}')
    ladder = None              # --bundle brings its own ladder (export --ladder) or none
    wants = getattr(args, 'latency_budget_ms', 0.0) > 0 or getattr(args, 'rung', 'auto') != 'auto'
    if wants and (args.backend == 'torch' or args.bundle is None):
        from ros2_gmskip.gmskip.ladder import ladder_path
        from ros2_gmskip.runtime.defaults import default_plan_path
        from ros2_gmskip.runtime.ladder import LadderError
        plan = args.plan or (default_plan_path() if args.model is None and not args.full
                             else None)
        if plan is None:
            raise LadderError('--latency-budget-ms / --rung need a skip plan with a ladder: '
                              'pass --plan (calibrate writes <plan>.ladder.json beside it)')
        ladder = ladder_path(plan)
    return backend_from_args(args, ladder=ladder)


def _ms(x: float | None) -> str:
    return f'{x:.1f}' if x is not None else '-'


def latency_table(summary: dict, quantiles: tuple[str, ...] = ('p50', 'p90', 'p99', 'max'),
                  stages: tuple[str, ...] = tuple(STAGE_NAMES)) -> list[str]:
    """Lines of a latency table (ms) from a replay summary: one row per stage."""
    lines = [f'  {"latency (ms)":<14}' + ''.join(f'{q:>9}' for q in quantiles)]
    for stage in stages:
        row = summary['latency'].get(stage) or {}
        lines.append(f'  {STAGE_NAMES.get(stage, stage):<14}'
                     + ''.join(f'{_ms(row.get(q)):>9}' for q in quantiles))
    return lines


def summary_lines(s: dict) -> list[str]:
    """Format the human-readable replay summary."""
    from ros2_gmskip.ros.pipeline import token_skip_text
    ids = ', '.join(f'{k} {s[k]}' for k in ('model_id', 'plan_id', 'engine_id') if s.get(k))
    lines = [
        f'replayed {s["in_bag"]} ({s["in_storage"]}, {s["msgtype"]} on {s["topic"]}) at rate '
        f'{s["rate"]} -> {s["out_bag"]} ({s["out_storage"]})',
        f'frames {s["frames"]}: described {s["described"]}, dropped {s["dropped"]}, '
        f'rejected {s["rejected"]}, errors {s["errors"]}'
        + (f', undeserializable (skipped) {s["skipped"]}' if s['skipped'] else ''),
    ]
    if s['bag_error']:
        lines.append(f'bag error: {s["bag_error"]}')
    if s['last_error'] and (s['rejected'] or s['errors']):
        lines.append(f'last error: {s["last_error"]}')
    lines += latency_table(s)
    if s.get('rung_frames'):
        lines.append('plan-ladder rungs (frames): '
                     + ', '.join(f'{k}: {v}' for k, v in s['rung_frames'].items())
                     + f'; {s["rung_switches"]} switches; latency budget '
                     + (f'{s["latency_budget_ms"]:g} ms' if s['latency_budget_ms'] else 'off'))
    lines.append(f'tokens/s {s["tokens_per_s"]:.1f} | backend {s["backend"]}'
                 + (f' | {ids}' if ids else '')
                 + (f' | blocks removed {s["blocks_removed"]}' if s['blocks_removed'] else '')
                 + (f' | token skipping: {token_skip_text(s["token_skip"])}'
                    if s.get('token_skip') else ''))
    speed = f' ({s["bag_s"] / s["wall_s"]:.2f}x bag time)' if s['wall_s'] and s['bag_s'] else ''
    lines.append(f'{s["bag_s"]:.1f} s of bag in {s["wall_s"]:.1f} s{speed}')
    lines.append(f'wrote {s["out_bag"]}: '
                 + ', '.join(f'{topic} {n}' for topic, n in s['outputs'].items()))
    return lines


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.errors import BagError
    from ros2_gmskip.folders import check_writable
    from ros2_gmskip.ros.params import load_params
    from ros2_gmskip.ros.replay import replay_bag

    if args.out.exists():
        raise BagError(f'output {str(args.out)!r} exists: choose another path or remove it')
    check_writable(args.out, '--out')
    overrides = {'prompt': args.prompt, 'max_new_tokens': args.max_new_tokens,
                 'object_parser': args.object_parser,
                 'latency_budget_ms': args.latency_budget_ms, 'rung': args.rung}
    if args.max_image_pixels is not None:
        overrides['max_image_pixels'] = args.max_image_pixels
    params = load_params(overrides=overrides)
    summary = replay_bag(args.in_bag, args.out, lambda: make_backend(args), params,
                         rate=args.rate, topic=args.topic, storage=args.storage,
                         progress=not args.no_progress)
    for line in summary_lines(summary):
        print(line)
    if summary['bag_error']:
        print(f'warning: {args.in_bag} is damaged; replayed the {summary["frames"]} frames '
              f'before the damage: {summary["bag_error"]}', file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    if summary['frames'] and not summary['described'] and summary['errors']:
        print(f'error: the backend failed on all {summary["errors"]} frames: '
              f'{summary["last_error"]}', file=sys.stderr)
        return 1
    return 0
