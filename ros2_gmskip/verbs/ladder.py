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
Write the plan ladder of an existing skip plan, without searching again.

calibrate writes a ladder beside every plan it makes; this verb makes one for a plan that has
none (or with other --extra / --floor). The rungs are the nested states of the plan's recorded
trajectory plus up to --extra faster ones (see gmskip/ladder.py). On the plan's own calibration
data (its metric's split and n, the default) and without token skipping, the trajectory's scores
are reused; otherwise every rung is scored.

usage examples:
  ros2-gmskip ladder --plan models/gmskip-llava-scenes/plans/accuracy-reverse.json
  ros2-gmskip ladder --model DIR --plan plan.json --extra 2 --floor 0.8 --out plan.ladder.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ros2_gmskip.argtypes import (
    existing_dir,
    existing_file,
    fraction,
    model_dir_or_default,
    non_negative_int,
    positive_int,
)
from ros2_gmskip.gmskip.ladder import EXTRA, FLOOR
from ros2_gmskip.verbs.calibrate import write_ladder

HELP = 'write the plan ladder (nested rungs for a latency budget) of an existing skip plan'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='model folder the plan was made for (default: the embedded '
                             'default model)')
    parser.add_argument('--plan', type=existing_file, required=True,
                        help='skip plan from ros2-gmskip calibrate')
    parser.add_argument('--data', default=None,
                        help="calibration data: 'val', 'test' or a folder (default: the plan's)")
    parser.add_argument('--n', type=positive_int, default=None,
                        help="calibration samples (default: the plan's)")
    parser.add_argument('--batch-size', type=positive_int, default=16,
                        help='calibration batch size (default: %(default)s)')
    parser.add_argument('--extra', dest='ladder_extra', type=non_negative_int, default=EXTRA,
                        metavar='N', help="rungs faster than the trajectory's last state "
                                          '(default: %(default)s)')
    parser.add_argument('--floor', dest='ladder_floor', type=fraction, default=FLOOR,
                        metavar='RATIO', help='drop rungs scoring below this share of the '
                                              'unpruned model (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=None,
                        help='ladder to write (default: beside the plan, <plan>.ladder.json)')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="allow the model folder's own Python code (off by default)")


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.errors import DatasetError, PlanError
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.gmskip.ladder import ladder_path, save_ladder
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.scenes import load_samples

    args.model = model_dir_or_default(args.model)
    plan = load_plan(args.plan, model_dir=args.model)          # refuses other weights
    if not plan.trajectory:
        raise PlanError(f'plan {args.plan} records no trajectory: re-run ros2-gmskip calibrate')
    out = args.out or ladder_path(args.plan)
    if out.is_dir():
        raise PlanError(f'--out {str(out)!r} is a folder: give the ladder file to write')
    data = args.data or plan.metric.split or 'val'
    n = args.n or plan.metric.n or 128
    samples = load_samples(data, n)
    if not samples:
        raise DatasetError(f'no calibration samples in {data!r}: use val, test or a folder with '
                           'images and captions')
    evaluator = CalibrationEvaluator(args.model, samples, metric=plan.metric.name,
                                     batch_size=args.batch_size,
                                     trust_remote_code=args.trust_remote_code)
    same_data = (data, len(samples)) == (plan.metric.split, plan.metric.n)
    print(f'ladder of {args.plan} ({len(plan.trajectory)} trajectory states) on {len(samples)} '
          f'{data} samples, metric {plan.metric.name}'
          + ('' if same_data else " (not the plan's calibration data: the unpruned model and "
                                  'every rung are scored)'))
    known, other = None, None
    if same_data:
        known = {s.removed: s.score for s in plan.trajectory}
    else:                  # the ratio needs the unpruned model's score on these samples
        other = (data, len(samples), evaluator.score(()))
    ladder = write_ladder(evaluator, plan.trajectory, plan, args, known=known, data=other)
    print(f'wrote {save_ladder(ladder, out)} ({len(ladder.rungs)} rungs, the plan is rung '
          f'{ladder.plan_rung})')
    return 0
