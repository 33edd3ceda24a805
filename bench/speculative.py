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
Speculative decoding on the pruned default model's fused ONNX Runtime decoder, side by side.

    .venv/bin/python bench/speculative.py                      # 40 test scenes, 3 rounds
    .venv/bin/python bench/speculative.py --n 100 --rounds 5 --guesses 0,1,2,3,4,6

Two tables, each from one run with the configurations interleaved round by round:
1. the cost of one decoder run by the number of new rows (1 = a plain greedy step; 1 + k = the
   last token and k drafted ones), relative to one row: why a guess is cheap but not free;
2. per `--guesses` value (0 = greedy): decoder runs, tokens kept per run, decode ms per frame
   (median over the rounds of the per-round mean), ratio to greedy, and whether every text is
   greedy's.
Uses the blocks-only bundle (`ensure_bundle(tokens=TokenSkip())`), 1 thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--n', type=int, default=40, help='test scenes')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--guesses', default='0,1,2,3,4,6',
                        help='draft tokens per run to compare (0: greedy)')
    parser.add_argument('--rows-reps', type=int, default=300, help='runs per row count and round')
    args = parser.parse_args()
    guesses = [int(g) for g in args.guesses.split(',')]

    from ros2_gmskip.runtime.defaults import ensure_bundle
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.runtime.results import DEFAULT_PROMPT
    from ros2_gmskip.scenes.dataset import load_samples
    from ros2_gmskip.tokenskip.settings import TokenSkip

    bundle = ensure_bundle(tokens=TokenSkip())
    loops = {k: OrtBackend(bundle, threads=1, draft_tokens=k).decoder_loop for k in guesses}
    widest = OrtBackend(bundle, threads=1, draft_tokens=max(guesses + [6])).decoder_loop
    if not widest.speculative:
        parser.error(f'{bundle} has no draft table or no all_logits output: run '
                     'ros2-gmskip draft, then export again')
    ref = next(iter(loops.values()))
    backend = OrtBackend(bundle, threads=1, draft_tokens=0)
    ids = backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    embeds = [backend.prompt_embeds(ids, backend.image_embeds(backend.preprocess(s.image))[0])
              for s in load_samples('test', args.n)]

    # 1. one run's cost by rows, after a real prompt (one fused segment: the blocks-only bundle)
    T = embeds[0].shape[1]
    [runner] = widest.runners
    runner.prefill(np.ascontiguousarray(embeds[0]), np.arange(T))
    rows = list(range(1, widest.draft_tokens + 2))
    cost: dict[int, list[float]] = {m: [] for m in rows}
    for r in range(args.rounds):
        for m in (rows if r % 2 == 0 else rows[::-1]):
            run_rows, positions = backend.embed_table[[7] * m][None], np.arange(T, T + m)
            t = time.perf_counter()
            for _ in range(args.rows_reps):
                runner.run(run_rows, positions, T)
            cost[m].append((time.perf_counter() - t) / args.rows_reps * 1e3)
    one = np.median(cost[1])
    print('rows per run   ms per run   vs 1 row')
    for m in rows:
        print(f'{m:>12} {np.median(cost[m]):12.3f} {np.median(cost[m]) / one:10.2f}')

    # 2. decode per frame by guesses
    stats = {k: {'ms': [], 'runs': 0, 'steps': 0, 'same': True} for k in guesses}
    want = [ref.generate(e, 48).ids.tolist() for e in embeds]
    for r in range(args.rounds):
        order = guesses[r % len(guesses):] + guesses[:r % len(guesses)]
        for k in order:
            outs = [loops[k].generate(e, 48) for e in embeds]
            s = stats[k]
            s['ms'].append(sum(o.decode_ms for o in outs) / len(outs))
            s['runs'] += sum(o.decode_runs or o.decode_steps for o in outs)
            s['steps'] += sum(o.decode_steps for o in outs)
            s['same'] &= all(o.ids.tolist() == w for o, w in zip(outs, want))
    base = np.median(stats[0]['ms']) if 0 in stats else None
    print(f'\nguesses  runs/frame  tokens/run  decode ms/frame  vs greedy  same text '
          f'({args.n} scenes x {args.rounds} rounds)')
    for k, s in stats.items():
        ms = np.median(s['ms'])
        vs = f'{ms / base:9.3f}' if base else '        -'
        print(f'{k:>7} {s["runs"] / args.n / args.rounds:11.2f} {s["steps"] / s["runs"]:11.2f} '
              f'{ms:16.2f} {vs}  {s["same"]}')


if __name__ == '__main__':
    main()
