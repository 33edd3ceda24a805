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

r"""
Evaluate a VLM (optionally pruned by a skip plan) on scenes or a COCO-captions-style folder.

Metrics: main-object accuracy (class or synonym named in the text), CIDEr-D, exact match, and
object F1 (the objects the text names - class, colour, position, distance - against the ground
truth; data with objects only).

    ros2-gmskip evaluate --model models/gmskip-llava-scenes --split test --n 500 --json
    ros2-gmskip evaluate --model models/gmskip-llava-scenes \
        --plan models/gmskip-llava-scenes/plans/accuracy-reverse.json --split test --n 500
    ros2-gmskip evaluate --model models/gmskip-llava-scenes --fastv 2,0.5 --kv-removal 1

Token skipping: a plan made with `calibrate --tokens` carries FastV / KV-removal settings, and
they are applied with its blocks, so the numbers are those of the model the node runs.
--no-plan-tokens measures the blocks alone; --fastv / --kv-removal set (or override) the token
knobs, with or without a plan, to try a setting before calibrating it.

With --json the last stdout line is one JSON object: {"accuracy", "cider", "exact_match",
"object_f1", "n", ...,
"tokens": null | {"fastv": {"k", "r", "seed"} | null, "kv_removal": {"ratio", ...} | null}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

from ros2_gmskip.argtypes import positive_int
from ros2_gmskip.verbs.token_options import add_token_arguments, token_skip_from_args

HELP = ('measure accuracy / CIDEr / exact match / object F1 of a (pruned) model on a data split '
        'or folder')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder (default: the embedded default model)')
    parser.add_argument('--plan', type=Path, default=None,
                        help='skip plan JSON: evaluate the pruned model without writing it '
                             '(with the token skipping it records, if any)')
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--split', choices=('train', 'val', 'test'), default='test',
                     help='procedural scene split (default: test)')
    src.add_argument('--data', type=str, default=None,
                     help='a COCO-captions-style folder instead of a scene split')
    parser.add_argument('--n', type=positive_int, default=500, help='number of images')
    parser.add_argument('--batch-size', type=positive_int, default=32)
    parser.add_argument('--show', type=int, default=3, help='print N example outputs')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help='allow model code from the model folder (off by default)')
    parser.add_argument('--object-parser', default='', metavar='MODULE:FUNCTION',
                        help="object_f1's parser of the generated text: the default model's "
                             'caption grammar (default) or a function(text) -> list of {cls, '
                             'color, position, distance} dicts')
    parser.add_argument('--json', action='store_true',
                        help='print the result as one JSON object on the last line')
    add_token_arguments(parser, "the plan's tokens entry")


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
    from ros2_gmskip.tokenskip.settings import TokenSkip
    from ros2_gmskip.vlm.loading import default_model_dir

    model_dir = args.model or default_model_dir()
    removed: list[int] = []
    stack = 'decoder'
    plan_id = None
    plan_tokens = None
    if args.plan:
        from ros2_gmskip.gmskip.plan import load_plan, plan_id as make_plan_id
        plan = load_plan(args.plan, model_dir=model_dir)
        removed = list(plan.removed_blocks)
        stack = plan.stack
        plan_id = make_plan_id(plan)
        plan_tokens = plan.tokens
    tokens = token_skip_from_args(args, plan_tokens)
    if tokens is None:
        tokens = TokenSkip.from_dict(plan_tokens)
    samples = load_samples(args.data or args.split, args.n)
    t0 = time.perf_counter()
    evaluator = CalibrationEvaluator(model_dir, samples, metric='exact_match',
                                     batch_size=args.batch_size,
                                     trust_remote_code=args.trust_remote_code, stack=stack,
                                     object_parser=args.object_parser)
    if args.plan:
        from ros2_gmskip.gmskip.plan import check_plan_fits
        check_plan_fits(plan, args.plan, evaluator.model)
    if not tokens.is_off:
        evaluator.check_tokens()
    metrics, texts = evaluator.all_metrics(removed, tokens=tokens)
    seconds = time.perf_counter() - t0
    for sample, text in list(zip(samples, texts))[:max(args.show, 0)]:
        print(f'[{sample.image_id}] truth: {sample.captions[0]}')
        print(f'{"":>{len(str(sample.image_id)) + 2}} model: {text}')
    result = {**{k: round(v, 4) for k, v in metrics.items()}, 'n': len(samples),
              'data': args.data or args.split, 'model': str(model_dir),
              'plan': str(args.plan) if args.plan else None, 'plan_id': plan_id,
              'removed_blocks': removed, 'stack': stack, 'num_blocks': evaluator.num_blocks,
              'tokens': tokens.to_dict(), 'seconds': round(seconds, 1)}
    print(' '.join(f'{k}={v}' for k, v in metrics.items()) +
          f' n={len(samples)} blocks={evaluator.num_blocks - len(removed)}/{evaluator.num_blocks}'
          f'{" stack=" + stack if stack != "decoder" else ""}'
          f' tokens={tokens.describe()!r}')
    if args.json:
        print(json.dumps(result))
    return 0
