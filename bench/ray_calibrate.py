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
GM-Skip calibration, serial vs Ray workers, side by side in one run; then a cluster estimate.

    .venv/bin/python bench/ray_calibrate.py             # 8 val scenes, 16 tokens, greedy, 2 steps
    .venv/bin/python bench/ray_calibrate.py --n 64 --max-new-tokens 48 --max-sparsity 0.1875

1. the serial search (this process, torch's default threads) and the same search on a local
   Ray cluster (127.0.0.1 only) with `--workers` one-CPU workers: setup (model loads, baseline,
   vision features) and search wall time, evaluations, and whether the plans match;
2. what moved through Ray, measured: the payload put in the object store once (batches + vision
   features), task arguments and results per evaluation;
3. a paper estimate for a cluster: a greedy search over a 32-block decoder (24 candidates after
   protecting 8), evaluations per step, the ideal speed-up with W workers from the step
   structure alone, and the bytes per evaluation at 1000 calibration images.
"""

from __future__ import annotations

import argparse
import math
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--n', type=int, default=8, help='val scenes')
    parser.add_argument('--max-new-tokens', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--strategy', default='greedy', choices=('greedy', 'reverse'))
    parser.add_argument('--max-sparsity', type=float, default=0.125,
                        help='cap on removed blocks (0.125 of 16: two greedy steps)')
    parser.add_argument('--metric', default='cider')
    args = parser.parse_args()

    from ros2_gmskip.argtypes import model_dir_or_default
    from ros2_gmskip.gmskip.distributed import RayScorer
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.strategies import search
    from ros2_gmskip.scenes import load_samples
    import torch

    model = model_dir_or_default(None)
    samples = load_samples('val', args.n)
    settings = {'metric': args.metric, 'batch_size': args.batch_size,
                'max_new_tokens': args.max_new_tokens}
    search_kw = {'strategy': args.strategy, 'progress': False,
                 'objective': Objective(lam=0.3, max_sparsity=args.max_sparsity)}

    t0 = time.perf_counter()
    evaluator = CalibrationEvaluator(model, samples, **settings)
    t1 = time.perf_counter()
    serial = search(evaluator.score, evaluator.num_blocks, **search_kw)
    t2 = time.perf_counter()
    scorer = RayScorer(model, samples, workers=args.workers, **settings)
    t3 = time.perf_counter()
    distributed = search(scorer, scorer.num_blocks, **search_kw)
    t4 = time.perf_counter()
    scorer.close()

    same = ([s.to_dict() for s in serial.evaluated] ==
            [s.to_dict() for s in distributed.evaluated])
    print(f'{args.strategy} search, {args.n} val scenes, batch {args.batch_size}, '
          f'{args.max_new_tokens} new tokens, metric '
          f'{args.metric}, max sparsity {args.max_sparsity:g}; {serial.evaluations} evaluations; '
          f'{torch.get_num_threads()} torch threads serial, {args.workers} one-CPU Ray workers')
    print(f'{"":24}{"setup s":>10}{"search s":>10}{"s/eval":>10}{"total s":>10}')
    rows = (('serial', t1 - t0, t2 - t1), (f'ray x{args.workers}', t3 - t2, t4 - t3))
    for name, setup, run in rows:
        print(f'{name:24}{setup:10.1f}{run:10.1f}{run / serial.evaluations:10.2f}'
              f'{setup + run:10.1f}')
    print(f'search ratio ray/serial {(t4 - t3) / (t2 - t1):.2f}; total ratio '
          f'{(t4 - t2) / (t2 - t0):.2f}; same plan: {distributed.best == serial.best}; '
          f'same scores for every evaluated set: {same}')

    evaluations = distributed.evaluations - 1           # the baseline ran in the prepare task
    per_eval_args = scorer.task_bytes / max(1, evaluations)
    per_eval_results = scorer.result_bytes / max(1, evaluations)
    per_sample = per_eval_results / args.n
    print(f'\nmoved through Ray: payload {scorer.payload_bytes / 1e6:.2f} MB once per worker '
          f'({scorer.payload_bytes / args.n / 1e3:.0f} kB per image: pixels, tokens, vision '
          f'features); per evaluation {per_eval_args:.0f} B of task arguments and '
          f'{per_eval_results:.0f} B of results ({per_sample:.0f} B per image: texts and '
          f'lengths); {scorer.tasks} tasks')

    L, protected, images = 32, 8, 1000
    C = L - protected
    steps = list(range(C, 0, -1))
    print(f'\ncluster estimate: greedy over {L} blocks, {C} candidates, {1 + sum(steps)} '
          f'evaluations ({", ".join(map(str, steps[:4]))}, ... 1 per step), {images} images in '
          f'batches of 16; per evaluation {per_eval_args:.0f} B out, '
          f'{per_sample * images / 1e3:.0f} kB back; payload '
          f'{scorer.payload_bytes / args.n * images / 1e9:.2f} GB once per worker at this '
          "model's image size")
    batches = math.ceil(images / 16)
    print(f'{"workers":>8}{"ideal speed-up":>16}{"busy share":>12}')
    for workers in (2, 8, 32, 128):
        serial_t = float(sum(steps))                    # in units of one evaluation
        ray_t = 0.0
        for c in steps:
            k = max(1, min(batches, math.ceil(workers / c)))   # distributed.shards
            ray_t += math.ceil(c * k / workers) / k
        print(f'{workers:>8}{serial_t / ray_t:16.1f}{serial_t / ray_t / workers:12.2f}')


if __name__ == '__main__':
    main()
