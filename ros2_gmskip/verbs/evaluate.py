"""Evaluate a VLM (optionally pruned by a skip plan) on scenes or a COCO-captions-style folder.

Metrics: main-object accuracy (class or synonym named in the text), CIDEr-D, exact match.

    ros2-gmskip evaluate --model models/gmskip-llava-scenes --split test --n 500 --json
    ros2-gmskip evaluate --model models/gmskip-llava-scenes \\
        --plan models/gmskip-llava-scenes/plans/accuracy-reverse.json --split test --n 500

With --json the last stdout line is one JSON object: {"accuracy", "cider", "exact_match", "n", ...}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

from ros2_gmskip.argtypes import positive_int

HELP = 'measure accuracy / CIDEr / exact match of a (pruned) model on a data split or folder'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder (default: the embedded default model)')
    parser.add_argument('--plan', type=Path, default=None,
                        help='skip plan JSON: evaluate the pruned model without writing it')
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


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
    from ros2_gmskip.vlm.loading import default_model_dir

    model_dir = args.model or default_model_dir()
    removed: list[int] = []
    plan_id = None
    if args.plan:
        from ros2_gmskip.gmskip.plan import load_plan, plan_id as make_plan_id
        plan = load_plan(args.plan, model_dir=model_dir)
        removed = list(plan.removed_blocks)
        plan_id = make_plan_id(plan)
    samples = load_samples(args.data or args.split, args.n)
    t0 = time.perf_counter()
    evaluator = CalibrationEvaluator(model_dir, samples, metric='exact_match',
                                     batch_size=args.batch_size,
                                     trust_remote_code=args.trust_remote_code)
    metrics, texts = evaluator.all_metrics(removed)
    seconds = time.perf_counter() - t0
    for sample, text in list(zip(samples, texts))[:max(args.show, 0)]:
        print(f'[{sample.image_id}] truth: {sample.captions[0]}')
        print(f'{"":>{len(str(sample.image_id)) + 2}} model: {text}')
    result = {**{k: round(v, 4) for k, v in metrics.items()}, 'n': len(samples),
              'data': args.data or args.split, 'model': str(model_dir),
              'plan': str(args.plan) if args.plan else None, 'plan_id': plan_id,
              'removed_blocks': removed, 'num_blocks': evaluator.num_blocks,
              'seconds': round(seconds, 1)}
    print(' '.join(f'{k}={v}' for k, v in metrics.items()) +
          f' n={len(samples)} blocks={evaluator.num_blocks - len(removed)}/{evaluator.num_blocks}')
    if args.json:
        print(json.dumps(result))
    return 0
