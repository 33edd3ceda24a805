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
Is a rung slower in the node's real-time replay than timed frame by frame? Both, side by side.

    .venv/bin/python bench/ladder_replay_gap.py --ladder-bundle bundles/ladder [--rungs 0 2]

The plan's bundle and fixed rungs of the ladder bundle run through the node's pipeline
(`DescriberCore`: conversion + describe, the processing time the chooser sees): first back to
back (`process()`, interleaved in blocks of 10 frames), then in real time at 30 Hz (the newest
frame wins), 10 s per configuration, alternated `--rounds` times so a slow spell of the machine
hits every configuration. Medians in ms and ratios to the plan's bundle.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
import statistics
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--ladder-bundle', type=Path, required=True)
    parser.add_argument('--rungs', type=int, nargs='+', default=[0, 2],
                        help='fixed rungs to time (default: 0 and 2, the shipped plan)')
    parser.add_argument('--rounds', type=int, default=2, help='real-time passes (default: 2)')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latency_budget import FPS, load_frames, realtime_run
    from ros2_gmskip.ros.bag import make_bag
    from ros2_gmskip.ros.params import load_params
    from ros2_gmskip.ros.pipeline import default_convert, DescriberCore
    from ros2_gmskip.runtime import defaults
    from ros2_gmskip.runtime.factory import create_backend

    model, plan = defaults.default_model_dir(), defaults.default_plan_path()
    with tempfile.TemporaryDirectory() as tmp:
        make_bag(Path(tmp) / 'bag', n=round(10 * FPS), fps=FPS, width=640, height=480,
                 progress=False)
        frames, _ = load_frames(Path(tmp) / 'bag')
    params = load_params()
    ladder = create_backend('onnxruntime', model=model, threads=args.threads, plan=plan,
                            bundle=args.ladder_bundle)
    configs = {'plan bundle': (create_backend('onnxruntime', model=model, threads=args.threads,
                                              plan=plan), params)}
    for r in args.rungs:
        configs[f'ladder rung {r}'] = (ladder, replace(params, rung=str(r)))
    back, real = {k: [] for k in configs}, {k: [] for k in configs}
    cores = {k: DescriberCore(b, p, publish=lambda out: None, convert=default_convert)
             for k, (b, p) in configs.items()}
    for first in range(0, len(frames), 10):
        for name, core in cores.items():
            for msg in frames[first:first + 10]:
                core.process(msg, False)
                back[name].append(core.last_output.processing_time_ms)
    for _ in range(args.rounds):
        for name, (backend, p) in configs.items():
            outputs, _ = realtime_run(backend, p, frames, hog_at=len(frames) + 1)
            real[name] += [o.processing_time_ms for o in outputs[10:]]   # past the first-run
    print(f'{len(frames)} frames back to back; real time {args.rounds} x 10 s per configuration')
    print(f'{"":<14} {"back to back":>12} {"/plan":>6} {"real time":>10} {"/plan":>6} {"n":>5}')
    base = {k: statistics.median(v['plan bundle']) for k, v in (('b', back), ('r', real))}
    for name in configs:
        b, r = statistics.median(back[name]), statistics.median(real[name])
        print(f'{name:<14} {b:>12.1f} {b / base["b"]:>6.2f} {r:>10.1f} {r / base["r"]:>6.2f} '
              f'{len(real[name]):>5}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
