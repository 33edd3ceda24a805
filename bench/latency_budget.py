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
Depth on a latency budget, side by side: the fixed plan vs its plan ladder under a CPU hog.

    .venv/bin/python bench/latency_budget.py                        # torch backend, all cores
    .venv/bin/python bench/latency_budget.py --seconds 90 --lead-in 10 --out result.json
    .venv/bin/python bench/latency_budget.py --backend onnxruntime --threads 1 \
        --ladder-bundle bundles/ladder                 # export --ladder PLAN.ladder.json

One camera bag (test scenes at 30 Hz with ground truth) replayed twice in real time through the
node's pipeline (`DescriberCore`: the newest frame wins, the rest are dropped and counted):
1. the fixed shipped plan (latency_budget_ms 0), as the node runs today;
2. the plan's ladder at latency_budget_ms = run 1's p90 processing time in its unloaded half.
On onnxruntime, run 1 is the plan's own bundle (the cached export, as the node makes it) and run
2 the ladder bundle (`--ladder-bundle`, else the cached `export --ladder`).
In both, a second process burning one core (a busy loop) starts half-way through the bag and
runs to its end. The first --lead-in seconds of each run (the node starting: first-run costs,
and for the ladder the warm-up that measures every rung) count in neither half.
Per half: p50 / p90 / p99 processing time, drop ratio (frames of the half not described),
accuracy on the described frames (the main object named, as `evaluate`), the rungs run.
Goal: the ladder's p90 within the budget in both halves (the fixed plan's over it when loaded),
and its unloaded accuracy at least the fixed plan's. The load average is printed with the
result: on a shared machine other jobs distort both runs, so rerun when it is high.
`--out X.json` also keeps every described frame (seconds into the bag, processing ms, rung) and
draws them, both runs over each other with the budget and the hog's start, as X.png.

`--interleave S`: one replay instead of two, the bag's frames going to the fixed plan and to the
ladder by turns in slices of S seconds (two pipelines, one fed at a time), so that a slow spell
of a shared machine hits both alike; each half's numbers are over each configuration's own
slices. The ladder's budget is then the fixed plan's unloaded p90 of this same replay: set at
every slice from the fixed plan's unloaded frames so far (a live `latency_budget_ms` change, as
`ros2 param set` makes one) and final when the hog starts; before there are 30 of them, from a
pass of the fixed plan alone over the lead-in (its p90 after the first 5 s). --budget-ms fixes
it instead.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time

FPS = 30.0
HOG = 'while True: pass'


def load_frames(bag: Path) -> tuple[list, dict[int, str]]:
    """Return the bag's image messages in order and {stamp ns: main class} from its truth."""
    from ros2_gmskip.ros.bag import BagImageReader, GROUND_TRUTH_TOPIC
    from ros2_gmskip.ros.replay import read_string_topic

    with BagImageReader(bag) as reader:
        frames = [frame.msg for frame in reader.frames()]
    truth, _ = read_string_topic(bag, GROUND_TRUTH_TOPIC)
    classes = {}
    for _, data in truth:
        record = json.loads(data)
        classes[int(record['stamp_ns'])] = record['scene']['main_class']
    return frames, classes


def stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def output_stamp_ns(out) -> int:
    """Return the stamp of the frame a SceneOutput describes, in ns (as stamp_ns)."""
    return out.stamp_sec * 1_000_000_000 + out.stamp_nanosec


def realtime_run(backend, params, frames: list, hog_at: int, hogs: int = 1
                 ) -> tuple[list, dict]:
    """Feed `frames` at FPS; start the hogs before frame `hog_at`; return (outputs, counts)."""
    outputs, counts, _ = interleaved_run({'run': (backend, params)}, frames, hog_at, hogs,
                                         slice_frames=max(1, len(frames)))['run']
    return outputs, counts


def interleaved_run(runs: dict[str, tuple], frames: list, hog_at: int, hogs: int,
                    slice_frames: int, on_slice=None) -> dict[str, tuple[list, dict, set]]:
    """
    Feed `frames` at FPS to the runs' pipelines by turns, `slice_frames` at a time.

    The hogs start before frame `hog_at`.
    `runs`: name -> (backend, params). Return name -> (outputs, counts, indices of the frames it
    was fed). At a slice's start the previous pipeline may still finish its frame (one frame
    of overlap per slice). `on_slice(i, outputs, cores)` runs before frame i starts a slice.
    """
    from ros2_gmskip.ros.pipeline import default_convert, DescriberCore

    outputs = {name: [] for name in runs}
    lock = threading.Lock()
    cores = {}
    for name, (backend, params) in runs.items():
        def publish(out, name=name) -> None:
            with lock:
                outputs[name].append(out)
        cores[name] = DescriberCore(backend, params, publish=publish, convert=default_convert)
        cores[name].start()
    names = list(runs)
    fed: dict[str, set] = {name: set() for name in runs}
    procs: list[subprocess.Popen] = []
    t0 = time.perf_counter()
    try:
        for i, msg in enumerate(frames):
            delay = t0 + i / FPS - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if i == hog_at:
                procs = [subprocess.Popen([sys.executable, '-c', HOG]) for _ in range(hogs)]
            name = names[(i // slice_frames) % len(names)]
            if on_slice is not None and i % slice_frames == 0:
                with lock:
                    so_far = {k: list(v) for k, v in outputs.items()}
                on_slice(i, so_far, cores)
            fed[name].add(i)
            cores[name].on_image(msg, False)
        while any(core.pending for core in cores.values()):
            time.sleep(0.01)
    finally:
        for core in cores.values():
            core.stop()
        for proc in procs:
            proc.kill()
            proc.wait()
    return {name: (outputs[name], cores[name].counts(), fed[name]) for name in runs}


def half_stats(outputs: list, stamps: list[int], classes: dict[int, str]) -> dict:
    """Per-half numbers for the outputs whose input stamp is one of `stamps`."""
    from ros2_gmskip.gmskip.metrics import names_class
    from ros2_gmskip.runtime.stats import percentiles

    wanted = set(stamps)
    mine = [o for o in outputs if output_stamp_ns(o) in wanted]
    times = [o.processing_time_ms for o in mine]
    named = sum(names_class(o.text, classes[output_stamp_ns(o)]) for o in mine)
    rungs: dict[str, int] = {}
    for o in mine:
        if o.rung is not None:
            rungs[str(o.rung['index'])] = rungs.get(str(o.rung['index']), 0) + 1
    q = percentiles(times, (50, 90, 99))
    return {'frames': len(stamps), 'described': len(mine),
            'drop_ratio': 1.0 - len(mine) / len(stamps) if stamps else 0.0,
            'p50_ms': q['p50'], 'p90_ms': q['p90'], 'p99_ms': q['p99'],
            'accuracy': named / len(mine) if mine else float('nan'), 'named': named,
            'rungs': rungs}


def trace(outputs: list, first_stamp: int) -> list[list]:
    """Return [seconds into the bag, processing ms, rung or None] per described frame."""
    return [[round((output_stamp_ns(o) - first_stamp) / 1e9, 3),
             round(o.processing_time_ms, 2), o.rung['index'] if o.rung else None]
            for o in outputs]


def plot(result: dict, path: Path) -> None:
    """Draw both runs' processing times (and the ladder's rung) against the budget."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ros2_gmskip.folders import file_in_place

    fig, (ax, rung_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                      gridspec_kw={'height_ratios': [3, 1]})
    colors = {'fixed plan': 'tab:gray', 'ladder': 'tab:blue'}
    for name, run in result['runs'].items():
        t, ms, _ = zip(*run['trace'])
        color = colors[name]
        ax.scatter(t, ms, s=3, color=color, alpha=0.5, label=f'{name} (p90 '
                   f'{run["unloaded"]["p90_ms"]:.0f} / {run["loaded"]["p90_ms"]:.0f} ms)')
    hog = result['hog_from_frame'] / result['fps']
    lead = result['lead_in_frames'] / result['fps']
    for a in (ax, rung_ax):
        a.axvline(hog, color='tab:red', lw=1)
        a.axvspan(0, lead, color='0.9')
    ax.axhline(result['budget_ms'], color='tab:red', ls='--', lw=1,
               label=f'budget {result["budget_ms"]:.1f} ms')
    ax.set_ylabel('processing time per frame (ms)')
    ax.set_ylim(0, max(3 * result['budget_ms'], 1))
    turns = (f', by turns every {result["interleave_s"]:g} s' if result.get('interleave_s')
             else '')
    ax.set_title(f'fixed plan vs plan ladder, 30 Hz replay{turns}; {result["hogs"]} busy-loop '
                 f'process(es) from {hog:.0f} s (red); grey: lead-in', fontsize=10)
    ax.legend(loc='upper left', markerscale=4)
    t, _, rungs = zip(*result['runs']['ladder']['trace'])
    rung_ax.step(t, rungs, where='post', color='tab:blue')
    rung_ax.set_ylabel('ladder rung')
    rung_ax.set_xlabel('seconds into the bag')
    fig.tight_layout()
    with file_in_place(path, 'plot') as tmp:
        fig.savefig(tmp, dpi=110, format='png')
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=90.0, help='bag length (30 Hz)')
    parser.add_argument('--lead-in', type=float, default=10.0,
                        help='seconds at the start of each run counted in neither half')
    parser.add_argument('--backend', default='torch', choices=('torch', 'onnxruntime'),
                        help='backend (default: %(default)s)')
    parser.add_argument('--bundle', type=Path, default=None,
                        help="onnxruntime: the fixed plan's bundle (default: the cached export)")
    parser.add_argument('--ladder-bundle', type=Path, default=None,
                        help='onnxruntime: the ladder bundle (export --ladder; default: the '
                             'cached export)')
    parser.add_argument('--threads', type=int, default=os.cpu_count(),
                        help='backend threads (default: every core, as a node would take)')
    parser.add_argument('--plan', type=Path, default=None,
                        help='skip plan (default: the shipped plan of the default model)')
    parser.add_argument('--ladder', type=Path, default=None,
                        help='its ladder (default: <plan>.ladder.json)')
    parser.add_argument('--budget-ms', type=float, default=None,
                        help="ladder budget (default: the fixed plan's unloaded p90)")
    parser.add_argument('--ladder-first', action='store_true',
                        help='run the ladder before the fixed plan (needs --budget-ms): does the '
                             'order (drift of a shared machine) favour the first run?')
    parser.add_argument('--interleave', type=float, default=None, metavar='S',
                        help='one replay, the two configurations by turns in slices of S seconds '
                             '(see above)')
    parser.add_argument('--hogs', type=int, default=1,
                        help='busy-loop processes started half-way (default: 1, one core)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--out', type=Path, default=None, help='also write the result as JSON')
    args = parser.parse_args()
    if args.ladder_first and args.budget_ms is None:
        parser.error("--ladder-first needs --budget-ms (the budget is the fixed run's p90)")

    from dataclasses import replace

    from ros2_gmskip.gmskip.ladder import ladder_path, load_ladder
    from ros2_gmskip.ros.bag import make_bag
    from ros2_gmskip.ros.params import load_params
    from ros2_gmskip.runtime import defaults
    from ros2_gmskip.runtime.factory import create_backend
    from ros2_gmskip.runtime.stats import percentiles

    model = defaults.default_model_dir()
    plan = args.plan or defaults.default_plan_path()
    ladder = args.ladder or ladder_path(plan)
    rungs = load_ladder(ladder, model_dir=model).runtime()
    n = round(args.seconds * FPS)
    lead = round(args.lead_in * FPS)
    half = lead + (n - lead) // 2
    with tempfile.TemporaryDirectory() as tmp:
        make_bag(Path(tmp) / 'bag', n=n, fps=FPS, width=args.width, height=args.height,
                 progress=False)
        frames, classes = load_frames(Path(tmp) / 'bag')
    stamps = [stamp_ns(m) for m in frames]
    halves = {'unloaded': stamps[lead:half], 'loaded': stamps[half:]}
    print(f'{n} frames at {FPS:g} Hz ({args.width}x{args.height}); lead-in {lead} frames, hog '
          f'from frame {half}; backend {args.backend}, {args.threads} threads; plan {plan.name} '
          f'(rung {rungs.plan_rung} of {len(rungs.rungs)}); load average {os.getloadavg()}',
          flush=True)

    params = load_params()
    result: dict = {'frames': n, 'fps': FPS, 'lead_in_frames': lead, 'hog_from_frame': half,
                    'hogs': args.hogs,
                    'threads': args.threads, 'plan': str(plan), 'ladder': str(ladder),
                    'load_average': {'start': os.getloadavg()}, 'runs': {}}
    budget = args.budget_ms
    configs = (('fixed plan', {'plan': plan, 'bundle': args.bundle}),
               ('ladder', {'plan': plan, 'ladder': ladder, 'bundle': args.ladder_bundle}))
    if args.ladder_first:
        configs = configs[::-1]
    backends = {}
    for name, opts in configs:
        if args.backend == 'torch':
            opts.pop('bundle')
        backends[name] = create_backend(args.backend, model=model, threads=args.threads, **opts)
        result.setdefault('engine_ids', {})[name] = backends[name].info.engine_id
    if args.interleave:
        if budget is None:            # the fixed plan alone over the lead-in, past its start
            outputs, _ = realtime_run(backends['fixed plan'], params, frames[:lead],
                                      hog_at=len(frames))
            start = stamps[min(round(5 * FPS), lead - 1)]
            budget = half_stats(outputs, [s for s in stamps[:lead] if s >= start],
                                classes)['p90_ms']
            result['budget_from'] = 'the fixed plan alone over the lead-in (after 5 s)'
            print(f'budget {budget:.1f} ms from the fixed plan alone over the lead-in',
                  flush=True)
        runs = {name: (backends[name], replace(params, latency_budget_ms=budget)
                       if name == 'ladder' else params) for name, _ in configs}
        unloaded = set(halves['unloaded'])
        budgets: list[float] = [budget]

        def follow(i: int, so_far: dict, cores: dict) -> None:
            # the ladder's budget := the fixed plan's unloaded p90 so far (frozen at the hog)
            if args.budget_ms is not None or i > half:
                return
            mine = [o.processing_time_ms for o in so_far['fixed plan']
                    if output_stamp_ns(o) in unloaded]
            if len(mine) >= 30:
                budgets.append(percentiles(mine, (90,))['p90'])
                cores['ladder'].set_latency_budget(budgets[-1])

        done = interleaved_run(runs, frames, hog_at=half, hogs=args.hogs,
                               slice_frames=max(1, round(args.interleave * FPS)),
                               on_slice=follow)
        budget = budgets[-1]
        result['budget_from'] = ("the fixed plan's unloaded p90 in this replay, as the ladder had "
                                 'it from the hog on' if len(budgets) > 1 else
                                 result.get('budget_from', 'given'))
        result['interleave_s'] = args.interleave
        index = {s: i for i, s in enumerate(stamps)}
        for name, (outputs, counts, fed) in done.items():
            own = {h: [s for s in ss if index[s] in fed] for h, ss in halves.items()}
            stats = {h: half_stats(outputs, s, classes) for h, s in own.items()}
            result['runs'][name] = {'counts': counts, **stats,
                                    'latency_budget_ms': runs[name][1].latency_budget_ms,
                                    'trace': trace(outputs, stamps[0])}
        result['load_average']['interleaved'] = os.getloadavg()
    for name, _ in configs if not args.interleave else ():
        backend = backends[name]
        run_params = replace(params, latency_budget_ms=budget) if name == 'ladder' else params
        outputs, counts = realtime_run(backend, run_params, frames, hog_at=half, hogs=args.hogs)
        stats = {h: half_stats(outputs, s, classes) for h, s in halves.items()}
        result['runs'][name] = {'counts': counts, **stats,
                                'latency_budget_ms': run_params.latency_budget_ms,
                                'trace': trace(outputs, stamps[0])}
        result['load_average'][name] = os.getloadavg()
        if budget is None:
            budget = stats['unloaded']['p90_ms']
        lead_outputs = sum(1 for o in outputs
                           if output_stamp_ns(o) < stamps[lead])
        warmup = 6 * len(rungs.rungs)          # runtime.ladder: prime each rung, 5 rounds
        if name == 'ladder' and lead_outputs < warmup:
            print(f'warning: the lead-in described {lead_outputs} frames, the warm-up needs '
                  f'{warmup}: raise --lead-in', flush=True)
        print(f'{name}: done; load average {os.getloadavg()}', flush=True)
    result['budget_ms'] = budget

    source = result.get('budget_from') or ('given' if args.budget_ms is not None
                                           else "the fixed plan's unloaded p90")
    print(f'\nbudget {budget:.1f} ms ({source})')
    print(f'{"run":<11} {"half":<9} {"p50":>7} {"p90":>7} {"p99":>7} {"drop":>6} '
          f'{"described":>9} {"accuracy":>8}  rungs')
    for name, run in result['runs'].items():
        for h in halves:
            s = run[h]
            print(f'{name:<11} {h:<9} {s["p50_ms"]:>7.1f} {s["p90_ms"]:>7.1f} '
                  f'{s["p99_ms"]:>7.1f} {s["drop_ratio"]:>6.1%} {s["described"]:>9} '
                  f'{s["accuracy"]:>8.1%}  {s["rungs"] or "-"}')
    fixed, lad = result['runs']['fixed plan'], result['runs']['ladder']
    goals = {
        'ladder p90 within budget, unloaded': lad['unloaded']['p90_ms'] <= budget,
        'ladder p90 within budget, loaded': lad['loaded']['p90_ms'] <= budget,
        'fixed plan p90 over budget, loaded': fixed['loaded']['p90_ms'] > budget,
        'ladder unloaded accuracy >= fixed plan': (lad['unloaded']['accuracy']
                                                   >= fixed['unloaded']['accuracy']),
    }
    result['goals'] = goals
    for goal, ok in goals.items():
        print(f'  {"yes" if ok else "NO ":<3}  {goal}')
    print(f'load average at the end {os.getloadavg()}')
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result) + '\n')
        plot(result, args.out.with_suffix('.png'))
        print(f'wrote {args.out} and {args.out.with_suffix(".png")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
