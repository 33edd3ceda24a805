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

Metrics: main-object accuracy (class or synonym named in the text), CIDEr-D, exact match.

    ros2-gmskip evaluate --model models/gmskip-llava-scenes --split test --n 500 --json
    ros2-gmskip evaluate --model models/gmskip-llava-scenes \
        --plan models/gmskip-llava-scenes/plans/accuracy-reverse.json --split test --n 500
    ros2-gmskip evaluate --model models/gmskip-llava-scenes --fastv 2,0.5 --kv-removal 1

Token skipping: a plan made with `calibrate --tokens` carries FastV / KV-removal settings, and
they are applied with its blocks, so the numbers are those of the model the node runs.
--no-plan-tokens measures the blocks alone; --fastv / --kv-removal set (or override) the token
knobs, with or without a plan, to try a setting before calibrating it.

With --json the last stdout line is one JSON object: {"accuracy", "cider", "exact_match", "n", ...,
"tokens": null | {"fastv": {"k", "r", "seed"} | null, "kv_removal": {"ratio", ...} | null}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

from ros2_gmskip.argtypes import fastv_setting, fraction, positive_int

HELP = 'measure accuracy / CIDEr / exact match of a (pruned) model on a data split or folder'


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
    parser.add_argument('--json', action='store_true',
                        help='print the result as one JSON object on the last line')
    tokens = parser.add_argument_group(
        "token skipping (with --plan: applied on top of its blocks, overriding the plan's own)")
    tokens.add_argument('--fastv', type=fastv_setting, default=None, metavar='K,R',
                        help='FastV: blocks 0..K-1 (of the pruned model) see every image token, '
                             'later blocks only the ceil((1-R) n) the last prompt token attends '
                             'to most, e.g. 2,0.5; R = 0 turns it off')
    tokens.add_argument('--kv-removal', type=fraction, default=None, metavar='RATIO',
                        help="drop this share of the visual tokens' KV-cache entries after the "
                             'prefill (1 = all, 0 = none), so decoding attends to fewer keys')
    tokens.add_argument('--no-plan-tokens', action='store_true',
                        help="ignore the plan's token skipping (its blocks are still removed)")


def resolve_tokens(plan_tokens: dict | None, fastv=None, kv_ratio: float | None = None):
    """Return the TokenSkip to evaluate: the plan's (None: none), then --fastv / --kv-removal."""
    from ros2_gmskip.tokenskip.settings import TokenSkip
    return TokenSkip.from_dict(plan_tokens).with_overrides(fastv, kv_ratio)


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
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
        plan_tokens = None if args.no_plan_tokens else plan.tokens
    tokens = resolve_tokens(plan_tokens, args.fastv, args.kv_removal)
    samples = load_samples(args.data or args.split, args.n)
    t0 = time.perf_counter()
    evaluator = CalibrationEvaluator(model_dir, samples, metric='exact_match',
                                     batch_size=args.batch_size,
                                     trust_remote_code=args.trust_remote_code, stack=stack)
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
