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
Search which decoder blocks to skip (GM-Skip) and write a skip plan.

Scores the model on calibration data with candidate blocks removed, walks the `reverse` or
`greedy` strategy, and picks the plan with the best balance J = S(R)/S(empty) + lambda*|R|/L that
meets the optional floors. The plan (JSON) records the model's weights hash, so `prune`, `export`
and the node refuse it for other weights.

With --tokens, a second search runs AFTER the block search, on the block-pruned model: every
token-skip setting of the grid ({FastV off} + --fastv-k x --fastv-r) x --kv-ratio is scored, and
the one with the best J_tok = S/S(empty) + lambda * (1 - FLOPs/FLOPs(block plan)) that still meets
--min-score-ratio (against the UNPRUNED model) goes into the plan's `tokens`; export, replay and
the node apply it. FastV: blocks 0..K-1 see all n image tokens, later blocks only the ceil((1-R) n)
that the last prompt token attends to most (K counts the blocks the plan keeps). KV removal drops
that share of the visual tokens' cache entries after the prefill, so decoding attends to fewer
keys. Every --kv-ratio is tried with FastV off and with every (K, R); "no token skipping" is
always a candidate (it is the block plan itself, so it costs no evaluation). FLOPs are the
decoder estimate of a whole description (tokenskip/flops.py) at the mean length the block-pruned
model generates on the calibration data.

With --ray, each step's candidates are scored by Ray workers that hold the model and the cached
vision features once (gmskip/distributed.py); the search itself is the same, so is the plan.
After every step the scores so far go to PLAN.progress.json beside --out; --resume takes them
up after an interruption (the file is deleted once the plan is written). The plan's `run`
records the engine, the workers and the search's wall time.

Beside the plan it writes its ladder (`plan.json` -> `plan.ladder.json`, see gmskip/ladder.py):
the nested plans of the trajectory plus up to --ladder-extra faster ones past its last state,
each with its score (with the plan's token skipping) and estimated FLOPs; rungs below
--ladder-floor or scoring no better than a faster rung are dropped. The node, given a latency
budget, runs the deepest rung that fits it.

usage examples:
  ros2-gmskip calibrate --model models/gmskip-default --data val --n 128 --out plan.json
  ros2-gmskip calibrate --strategy greedy --ray --workers 2 --out plan.json   # local Ray
  ros2-gmskip calibrate --strategy greedy --out plan.json --resume   # after an interruption
  ros2-gmskip calibrate --model DIR --strategy greedy --lambda 0.2 --min-score-ratio 0.98 \
      --protect-first 4 --out plans/greedy.json --plot plans/greedy.png
  ros2-gmskip calibrate --model DIR --min-score-ratio 0.95 --tokens --fastv-k 1,2 \
      --fastv-r 0.5,0.75 --kv-ratio 0,1 --out plans/tokens.json --plot plans/tokens.png
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import time

from ros2_gmskip.argtypes import (
    count_or_fraction,
    existing_dir,
    fraction,
    fraction_list,
    int_list,
    model_dir_or_default,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from ros2_gmskip.errors import DatasetError, PlanError
from ros2_gmskip.gmskip.ladder import EXTRA, FLOOR

HELP = 'search the blocks to skip (GM-Skip) and write a skip plan'
logger = logging.getLogger(__name__)

# The token-search grid's defaults: FastV's paper finds K = 2, R = 0.5 nearly free on LLaVA.
FASTV_K = (1, 2, 3)
FASTV_R = (0.25, 0.5, 0.75)
KV = (0.0, 1.0)


def _csv(values) -> str:
    return ','.join(f'{v:g}' for v in values)


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
                        help='task metric: accuracy, cider, exact_match, object_f1 or '
                             "'module:function' (default: %(default)s)")
    parser.add_argument('--object-parser', default='', metavar='MODULE:FUNCTION',
                        help="object_f1's parser of the generated text: the default model's "
                             'caption grammar (default) or a function(text) -> list of {cls, '
                             'color, position, distance} dicts')
    parser.add_argument('--stack', choices=('decoder', 'vision'), default='decoder',
                        help="which blocks to search: the language model's or the vision "
                             "tower's (default: %(default)s)")
    parser.add_argument('--strategy', choices=('reverse', 'greedy'), default='reverse',
                        help='reverse: one pass from the last block; greedy: remove the least '
                             'harmful block each step (default: %(default)s)')
    parser.add_argument('--lambda', dest='lam', type=non_negative_float, default=0.3,
                        help='weight of sparsity in J = S/S0 + lambda*|R|/L, and of the FLOPs '
                             'saved in the token search (default: %(default)s)')
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
                        help='also write a PNG of the search (score ratio and J vs blocks '
                             'removed)')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="allow the model folder's own Python code (off by default)")
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--resume', action='store_true',
                        help="go on with the search that wrote --out's progress file "
                             '(PLAN.progress.json, rewritten after every step) before it was '
                             'interrupted: same trajectory, same plan')
    cluster = parser.add_argument_group(
        'distributed (optional dependency: pip install ros2_gmskip[ray])')
    cluster.add_argument('--ray', nargs='?', const='local', default=None, metavar='ADDRESS',
                         help="score each step's candidates on Ray workers, each holding the "
                              'model once: alone, a local cluster on 127.0.0.1; else the '
                              'address of a running one (ray start --head). Same plan as '
                              'without --ray')
    cluster.add_argument('--workers', type=positive_int, default=None,
                         help='Ray workers (model copies), one CPU each (default: one per CPU '
                              'of the cluster)')
    ladder = parser.add_argument_group('plan ladder (written beside the plan as *.ladder.json)')
    ladder.add_argument('--ladder-extra', type=non_negative_int, default=EXTRA, metavar='N',
                        help="rungs faster than the search's last state: remove up to N more "
                             'blocks, the least harmful one per step (default: %(default)s)')
    ladder.add_argument('--ladder-floor', type=fraction, default=FLOOR, metavar='RATIO',
                        help='drop rungs scoring below this share of the unpruned model; the '
                             'plan is always kept (default: %(default)s)')
    ladder.add_argument('--no-ladder', action='store_true', help='write no ladder')
    tokens = parser.add_argument_group(
        'token skipping (searched after the block plan, on the pruned model)')
    tokens.add_argument('--tokens', action='store_true',
                        help='also search FastV K/R and the visual KV removal ratio; the plan '
                             'records the choice (implied by the three options below)')
    tokens.add_argument('--fastv-k', type=int_list, default=None, metavar='K,...',
                        help='FastV K values to try: blocks 0..K-1 of the pruned model see '
                             'every image token, later ones only the kept share; 0 keeps a '
                             'seeded random subset from the start; K >= the blocks the plan '
                             'keeps prunes nothing and is skipped (default: %s)' % _csv(FASTV_K))
    tokens.add_argument('--fastv-r', type=fraction_list, default=None, metavar='R,...',
                        help='FastV shares of image tokens to prune, in [0, 1] '
                             '(default: %s)' % _csv(FASTV_R))
    tokens.add_argument('--kv-ratio', type=fraction_list, default=None, metavar='RATIO,...',
                        help='shares of the visual KV-cache entries to drop after the prefill, '
                             'with and without FastV; 0 = keep them (default: %s)' % _csv(KV))


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.folders import check_writable
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.plan import plan_id, save_plan, SkipPlan, weights_sha256
    from ros2_gmskip.gmskip.progress import SearchProgress
    from ros2_gmskip.gmskip.strategies import search
    from ros2_gmskip.scenes import load_samples

    args.model = model_dir_or_default(args.model)
    if args.out.is_dir():
        raise PlanError(f'--out {str(args.out)!r} is a folder: give the plan file to write, '
                        'e.g. plan.json')
    check_writable(args.out, '--out')            # before the search, not after it
    if args.plot is not None:
        check_writable(args.plot, '--plot')
    if args.workers is not None and args.ray is None:
        raise PlanError(f'--workers {args.workers}: workers are Ray workers; add --ray')
    if args.ray is not None:
        from ros2_gmskip.gmskip.distributed import import_ray
        import_ray()                             # not installed: say so before any work
    objective = Objective(lam=args.lam, min_score_ratio=args.min_score_ratio,
                          max_sparsity=args.max_sparsity)
    sha256 = weights_sha256(args.model)          # fail before the long search, not after it
    with_tokens = wants_tokens(args)
    progress = SearchProgress.beside(args.out, {
        'sha256': sha256, 'data': args.data, 'n': args.n, 'metric': args.metric,
        'batch_size': args.batch_size, 'stack': args.stack,
        'object_parser': args.object_parser})
    known = progress.load() if args.resume else None

    samples = load_samples(args.data, args.n)
    if not samples:
        raise DatasetError(f'no calibration samples in {args.data!r}: use val, test or a folder '
                           'with images and captions')
    started = time.monotonic()
    evaluator = make_evaluator(args, samples)
    try:
        setup_s = time.monotonic() - started
        if with_tokens:
            evaluator.check_tokens()             # unsupported decoder: fail before the search
        engine = 'serial' if args.ray is None else 'ray'
        workers = getattr(evaluator, 'workers', 1)
        print(f'calibrating {args.model} ({evaluator.family}, {evaluator.num_blocks} '
              f'{args.stack} blocks) on {len(samples)} {args.data} samples, metric '
              f'{args.metric}, strategy '
              f'{args.strategy}' + ('' if args.ray is None else
                                    f', on Ray ({args.ray}): {_workers(workers)}'))
        if known:
            print(f'resuming: {len(known)} scores from {progress.path}')
        started = time.monotonic()
        result = search(evaluator if args.ray is not None else evaluator.score,
                        evaluator.num_blocks, strategy=args.strategy, objective=objective,
                        protect_first=args.protect_first, tolerance=args.tolerance,
                        progress=not args.no_progress, known=known, on_step=progress.save)
        search_s = time.monotonic() - started
        plan = SkipPlan.from_search(result, args.model, family=evaluator.family,
                                    metric=args.metric, split=args.data, n=len(samples),
                                    protect_first=args.protect_first, sha256=sha256,
                                    stack=args.stack)
        plan.run = {'engine': engine, 'workers': workers, 'wall_time_s': round(search_s, 3),
                    'setup_s': round(setup_s, 3),
                    'resumed_evaluations': sum(k in (known or {}) for k in
                                               [s.removed for s in result.evaluated])}
        print(format_trajectory(result))
        best = result.best
        print(f'plan: remove {len(best.removed)}/{result.num_blocks} {args.stack} blocks '
              f'{list(best.removed)}: {args.metric} {result.baseline:.4f} -> {best.score:.4f} '
              f'({100 * best.score_ratio:.1f}%), J {best.objective:.4f}; '
              f'{result.evaluations} evaluations in {search_s:.1f} s ({engine}, '
              f'{_workers(workers)}); protected {_span(result.protected)}')
        tokens = None
        if with_tokens:
            tokens = search_token_skip(evaluator, result, objective, args)
            plan.tokens = tokens.to_record()
        ladder = None
        if args.no_ladder:
            pass
        elif args.stack != 'decoder':
            print(f'no ladder for --stack {args.stack}: rungs are decoder blocks (write one with '
                  '--stack decoder)')
        else:
            ladder = write_ladder(evaluator, result.trajectory, plan, args, known={
                s.removed: s.score for s in result.evaluated})
    finally:
        if args.ray is not None:
            evaluator.close()
    save_plan(plan, args.out)
    progress.remove()
    print(f'wrote {args.out} (plan id {plan_id(plan)})')
    if ladder is not None:
        from ros2_gmskip.gmskip.ladder import ladder_path, save_ladder
        print(f'wrote {save_ladder(ladder, ladder_path(args.out))} ({len(ladder.rungs)} rungs, '
              f'the plan is rung {ladder.plan_rung})')
    if args.plot is not None:
        from ros2_gmskip.gmskip.plot import plot_search, plot_token_search
        title = (f'{args.model.name}: {args.strategy}, lambda {args.lam:g}, '
                 f'{args.data} n={len(samples)}')
        plot_search(result, args.plot, title=title)
        print(f'wrote {args.plot}')
        if tokens is not None:
            path = plot_token_search(tokens, token_plot_path(args.plot),
                                     title=f'{title}, blocks {list(best.removed)}')
            print(f'wrote {path}')
    return 0


def write_ladder(evaluator, trajectory, plan, args: argparse.Namespace, known=None, data=None):
    """Build the plan's ladder (scoring the rungs it needs) and print its table."""
    from ros2_gmskip.gmskip.ladder import build_ladder, format_ladder
    from ros2_gmskip.gmskip.plan import plan_id
    from ros2_gmskip.tokenskip.settings import TokenSkip

    tokens = TokenSkip.from_dict(plan.tokens)
    scored: list[tuple[int, ...]] = []

    def score(removed):
        scored.append(removed)
        return evaluator.score(removed, tokens=tokens)

    def score_many(sets):
        scored.extend(sets)
        return evaluator.score_many(sets, tokens=tokens)

    batched = hasattr(evaluator, 'score_many')       # a Ray scorer: a step's sets in parallel
    ladder, candidates = build_ladder(
        trajectory, plan, plan_id(plan), score, evaluator.workload(plan.removed_blocks),
        known=known, extra=args.ladder_extra, floor=args.ladder_floor, data=data,
        score_many=score_many if batched else None)
    print(f'ladder (fastest first; * = the plan; scores with token skipping: '
          f'{tokens.describe()}):')
    print(format_ladder(candidates, plan.removed_blocks))
    print(f'ladder: {len(ladder.rungs)} rungs, {len(scored)} evaluations')
    return ladder


def make_evaluator(args: argparse.Namespace, samples: list):
    """Return the scorer of the calibration set: in this process, or Ray workers (--ray)."""
    settings = {'metric': args.metric, 'batch_size': args.batch_size,
                'trust_remote_code': args.trust_remote_code, 'stack': args.stack,
                'object_parser': args.object_parser}
    if args.ray is None:
        from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
        return CalibrationEvaluator(args.model, samples, **settings)
    from ros2_gmskip.gmskip.distributed import RayScorer
    return RayScorer(args.model, samples, workers=args.workers, address=args.ray, **settings)


def wants_tokens(args: argparse.Namespace) -> bool:
    """
    Return True for --tokens or any grid option given, and fill in the grid's defaults.

    A grid option implies the token search: without it the grid would be silently lost.
    """
    given = [v is not None for v in (args.fastv_k, args.fastv_r, args.kv_ratio)]
    args.tokens = bool(args.tokens or any(given))
    args.fastv_k = list(FASTV_K) if args.fastv_k is None else args.fastv_k
    args.fastv_r = list(FASTV_R) if args.fastv_r is None else args.fastv_r
    args.kv_ratio = list(KV) if args.kv_ratio is None else args.kv_ratio
    return args.tokens


def search_token_skip(evaluator, result, objective, args: argparse.Namespace):
    """Run the token search on the block plan `result.best`; print its table and choice."""
    from ros2_gmskip.gmskip.token_search import search_tokens
    removed = result.best.removed
    workload = evaluator.workload(removed)
    print(f'token search on the block plan ({evaluator.num_blocks - len(removed)} blocks kept): '
          f'prompt {workload.n_tokens} tokens ({workload.n_image} image), FLOPs at '
          f"{workload.new_tokens} generated tokens (the block plan's mean)")
    tokens = search_tokens(lambda ts: evaluator.score(removed, tokens=ts),
                           baseline=result.baseline, block_score=result.best.score,
                           removed_blocks=removed, workload=workload, ks=args.fastv_k,
                           rs=args.fastv_r, kv_ratios=args.kv_ratio, objective=objective,
                           progress=not args.no_progress)
    print(format_token_trajectory(tokens))
    best = tokens.best
    print(f'tokens: {best.setting.describe()}: {args.metric} {tokens.block_score:.4f} -> '
          f'{best.score:.4f} ({100 * best.score_ratio:.1f}% of the unpruned model), decoder FLOPs '
          f'{100 * best.flops_ratio:.1f}% of the block plan, J {best.objective:.4f}; '
          f'{tokens.evaluations} evaluations')
    return tokens


def token_plot_path(plot: Path) -> Path:
    """`plans/p.png` -> `plans/p-tokens.png`."""
    return plot.with_name(f'{plot.stem}-tokens.png')


def format_token_trajectory(result) -> str:
    """Format the token search as a text table; the chosen setting marked with '*'."""
    rows = [f'{"#":>4}  {"K":>2}  {"R":>5}  {"KV":>5}  {"S":>8}  {"S/S0":>7}  {"FLOPs":>6}  '
            f'{"J":>7}  {"ok":>3}  setting']
    for i, step in enumerate(result.trajectory):
        mark = '*' if step is result.best else ' '
        k = '-' if step.k is None else str(step.k)
        r = '-' if step.r is None else f'{step.r:g}'
        rows.append(f'{i:>3}{mark}  {k:>2}  {r:>5}  {step.setting.kv_ratio:>5g}  '
                    f'{step.score:>8.4f}  {step.score_ratio:>7.4f}  {step.flops_ratio:>6.3f}  '
                    f'{step.objective:>7.4f}  {"yes" if step.feasible else "no":>3}  '
                    f'{step.setting.describe()}')
    return '\n'.join(rows)


def format_trajectory(result) -> str:
    """Format the trajectory as a text table; the chosen state marked with '*'."""
    rows = [f'{"step":>4}  {"block":>5}  {"S(R)":>8}  {"S/S0":>7}  {"J":>7}  {"ok":>3}  '
            f'{"evals":>5}  removed']
    for i, step in enumerate(result.trajectory):
        mark = '*' if step is result.best else ' '
        block = '-' if step.block is None else str(step.block)
        rows.append(f'{i:>3}{mark}  {block:>5}  {step.score:>8.4f}  {step.score_ratio:>7.4f}  '
                    f'{step.objective:>7.4f}  {"yes" if step.feasible else "no":>3}  '
                    f'{step.tried:>5}  {list(step.removed)}')
    return '\n'.join(rows)


def _workers(n: int) -> str:
    return f'{n} worker' + ('s' if n != 1 else '')


def _span(blocks: tuple[int, ...]) -> str:
    return 'none' if not blocks else f'blocks 0..{blocks[-1]}'
