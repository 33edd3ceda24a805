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
Time every rung of a ladder bundle against the plan's own bundle, interleaved on the same frames.

    .venv/bin/python bench/ladder_rungs.py --ladder-bundle bundles/ladder [--bundle PLAN_BUNDLE]

One describe per configuration per frame, round-robin (so a load change on the shared machine
hits every configuration alike), ONNX Runtime on one thread, 640x480 test scenes; medians of the
total and of the stages. What it answers: how much faster the fastest rung is than the plan
(the range a latency budget can use), and what the ladder layout costs on the plan's own rung
(more, smaller segment graphs than the plan bundle).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--ladder-bundle', type=Path, required=True)
    parser.add_argument('--bundle', type=Path, default=None,
                        help="the plan's bundle (default: the cached export of the default plan)")
    parser.add_argument('--n', type=int, default=20, help='test scenes (default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=3, help='passes over them')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()

    from ros2_gmskip.runtime import defaults
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.scenes import load_samples

    images = [s.load_image() for s in load_samples('test', args.n, width=640, height=480)]
    plan = OrtBackend(args.bundle or defaults.ensure_bundle(), threads=args.threads)
    ladder = OrtBackend(args.ladder_bundle, threads=args.threads)
    runs = {'plan bundle': plan.describe}
    for r in range(len(ladder.ladder.rungs)):
        runs[f'ladder rung {r}'] = (lambda r: lambda im: ladder.describe(im, rung=r))(r)
    results: dict[str, list] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for image in images:
            for name, describe in runs.items():
                t = time.perf_counter()
                out = describe(image)
                ms = (time.perf_counter() - t) * 1e3
                lat = out.latency
                results[name].append((ms, lat.preprocess_ms + lat.vision_ms, lat.prefill_ms,
                                      lat.decode_ms, out.tokens))
    base = statistics.median(r[0] for r in results['plan bundle'])
    print(f'{args.n} scenes x {args.rounds} rounds, {args.threads} thread(s); medians in ms')
    print(f'{"":<14} {"total":>6} {"/plan":>6} {"pre+vis":>8} {"prefill":>8} {"decode":>7} '
          f'{"tokens":>6}')
    for name, rows in results.items():
        total = statistics.median(r[0] for r in rows)
        print(f'{name:<14} {total:>6.1f} {total / base:>6.2f} '
              f'{statistics.median(r[1] for r in rows):>8.1f} '
              f'{statistics.median(r[2] for r in rows):>8.1f} '
              f'{statistics.median(r[3] for r in rows):>7.1f} '
              f'{statistics.mean(r[4] for r in rows):>6.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
