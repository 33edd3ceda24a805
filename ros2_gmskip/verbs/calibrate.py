"""Search which decoder blocks to skip (GM-Skip) and write a skip plan.

Scores the model on calibration data with candidate blocks removed, walks the `reverse` or
`greedy` strategy, and picks the plan with the best balance J = S(R)/S(empty) + lambda*|R|/L that
meets the optional floors. The plan (JSON) records the model's weights hash, so `prune`, `export`
and the node refuse it for other weights.

examples:
  ros2-gmskip calibrate --model models/gmskip-default --data val --n 128 --out plan.json
  ros2-gmskip calibrate --model DIR --strategy greedy --lambda 0.2 --min-score-ratio 0.98 \\
      --protect-first 4 --out plans/greedy.json --plot plans/greedy.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ros2_gmskip.argtypes import (
    count_or_fraction, existing_dir, fraction, model_dir_or_default, non_negative_float,
    positive_float, positive_int)
from ros2_gmskip.errors import DatasetError, PlanError

HELP = 'search the blocks to skip (GM-Skip) and write a skip plan'
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='model folder (save_pretrained layout, safetensors weights; '
                             'default: the embedded default model)')
    parser.add_argument('--data', default='val',
                        help="calibration data: 'val', 'test' (procedural scenes) or a "
                             'COCO-captions-style folder (default: %(default)s)')
    parser.add_argument('--n', type=positive_int, default=128,
                        help='calibration samples (default: %(default)s)')
    parser.add_argument('--metric', default='accuracy',
                        help="task metric: accuracy, cider, exact_match or 'module:function' "
                             '(default: %(default)s)')
    parser.add_argument('--strategy', choices=('reverse', 'greedy'), default='reverse',
                        help='reverse: one pass from the last block; greedy: remove the least '
                             'harmful block each step (default: %(default)s)')
    parser.add_argument('--lambda', dest='lam', type=non_negative_float, default=0.3,
                        help='weight of sparsity in J = S/S0 + lambda*|R|/L (default: %(default)s)')
    parser.add_argument('--protect-first', type=count_or_fraction, default=0.25,
                        help='never remove the first blocks: a count (4) or a fraction of the '
                             'blocks, rounded down (0.25) (default: %(default)s)')
    parser.add_argument('--min-score-ratio', type=positive_float, default=None,
                        help='floor on S(R)/S(empty), e.g. 0.98 (default: none)')
    parser.add_argument('--max-sparsity', type=fraction, default=None,
                        help='cap on the fraction of blocks removed, in [0, 1] (default: none)')
    parser.add_argument('--tolerance', type=non_negative_float, default=0.0,
                        help='reverse: keep a removal when J drops by at most this much '
                             '(default: %(default)s)')
    parser.add_argument('--batch-size', type=positive_int, default=16,
                        help='calibration batch size (default: %(default)s)')
    parser.add_argument('--out', type=Path, required=True, help='skip plan to write (JSON)')
    parser.add_argument('--plot', type=Path, default=None,
                        help='also write a PNG of the search (score ratio and J vs blocks removed)')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="allow the model folder's own Python code (off by default)")
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.plan import SkipPlan, plan_id, save_plan, weights_sha256
    from ros2_gmskip.gmskip.strategies import search
    from ros2_gmskip.scenes import load_samples

    args.model = model_dir_or_default(args.model)
    if args.out.is_dir():
        raise PlanError(f'--out {str(args.out)!r} is a folder: give the plan file to write, '
                        'e.g. plan.json')
    objective = Objective(lam=args.lam, min_score_ratio=args.min_score_ratio,
                          max_sparsity=args.max_sparsity)
    sha256 = weights_sha256(args.model)          # fail before the long search, not after it

    samples = load_samples(args.data, args.n)
    if not samples:
        raise DatasetError(f'no calibration samples in {args.data!r}: use val, test or a folder '
                           'with images and captions')
    evaluator = CalibrationEvaluator(args.model, samples, metric=args.metric,
                                     batch_size=args.batch_size,
                                     trust_remote_code=args.trust_remote_code)
    print(f'calibrating {args.model} ({evaluator.family}, {evaluator.num_blocks} decoder blocks) '
          f'on {len(samples)} {args.data} samples, metric {args.metric}, strategy {args.strategy}')

    result = search(evaluator.score, evaluator.num_blocks, strategy=args.strategy,
                    objective=objective, protect_first=args.protect_first,
                    tolerance=args.tolerance, progress=not args.no_progress)
    plan = SkipPlan.from_search(result, args.model, family=evaluator.family, metric=args.metric,
                                split=args.data, n=len(samples), protect_first=args.protect_first,
                                sha256=sha256)
    print(format_trajectory(result))
    best = result.best
    print(f'plan: remove {len(best.removed)}/{result.num_blocks} decoder blocks '
          f'{list(best.removed)}: {args.metric} {result.baseline:.4f} -> {best.score:.4f} '
          f'({100 * best.score_ratio:.1f}%), J {best.objective:.4f}; '
          f'{result.evaluations} evaluations; protected {_span(result.protected)}')
    save_plan(plan, args.out)
    print(f'wrote {args.out} (plan id {plan_id(plan)})')
    if args.plot is not None:
        from ros2_gmskip.gmskip.plot import plot_search
        plot_search(result, args.plot, title=f'{args.model.name}: {args.strategy}, '
                    f'lambda {args.lam:g}, {args.data} n={len(samples)}')
        print(f'wrote {args.plot}')
    return 0


def format_trajectory(result) -> str:
    """The trajectory as a text table; the chosen state marked with '*'."""
    rows = [f'{"step":>4}  {"block":>5}  {"S(R)":>8}  {"S/S0":>7}  {"J":>7}  {"ok":>3}  '
            f'{"evals":>5}  removed']
    for i, step in enumerate(result.trajectory):
        mark = '*' if step is result.best else ' '
        block = '-' if step.block is None else str(step.block)
        rows.append(f'{i:>3}{mark}  {block:>5}  {step.score:>8.4f}  {step.score_ratio:>7.4f}  '
                    f'{step.objective:>7.4f}  {"yes" if step.feasible else "no":>3}  '
                    f'{step.tried:>5}  {list(step.removed)}')
    return '\n'.join(rows)


def _span(blocks: tuple[int, ...]) -> str:
    return 'none' if not blocks else f'blocks 0..{blocks[-1]}'
