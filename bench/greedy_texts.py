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
Record the ONNX Runtime backend's greedy texts for every bundle kind, or compare with a record.

    .venv/bin/python bench/greedy_texts.py --out before.json              # record
    .venv/bin/python bench/greedy_texts.py --out after.json --compare before.json

Why: a change to the export or the decode loop must not change a single generated token. This
exports the embedded default model once per bundle kind (into the bundle cache, through
`runtime.defaults.ensure_bundle`, so the export is the one the node would make) and describes
`--n` test scenes with each way of running it: the fused graph with speculative decoding, the
fused graph one token per run, the portable graph, quantized (int4) decode steps, GM-Skip only,
FastV, FastV + visual KV removal. With `--compare` it prints, per configuration, how many texts
equal the record's and exits 1 when any differ. Set ROS2_GMSKIP_CACHE to keep the exports
apart from other runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import time

# bundle kind -> (full, token settings: None = the plan's, 'off', or (fastv K, R, kv ratio, kv
# start)), fused weights, [(decoder graph, draft tokens), ...]
KINDS = {
    'full': (True, 'off', 'fp32', [('fused', 4), ('fused', 0), ('portable', 0)]),
    'pruned': (False, 'off', 'fp32', [('fused', 4), ('fused', 0), ('portable', 0)]),
    'pruned_int4': (False, 'off', 'int4', [('fused', 4), ('fused', 0)]),
    'fastv': (False, None, 'fp32', [('fused', 4), ('fused', 0), ('portable', 0)]),
    'kv_removal': (False, (None, None, 1.0, 0), 'fp32', [('fused', 4), ('portable', 0)]),
    'combined': (False, (1, 0.5, 0.5, 2), 'fp32', [('fused', 4), ('fused', 0), ('portable', 0)]),
    'combined_int4': (False, (1, 0.5, 0.5, 2), 'int4', [('fused', 4)]),
}


def token_settings(spec):
    """Return the TokenSkip a KINDS entry names (None: the plan's own)."""
    from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip

    if spec is None:
        return None
    if spec == 'off':
        return TokenSkip()
    k, r, kv_ratio, kv_start = spec
    fastv = FastVConfig(k=k, r=r) if k is not None else None
    return TokenSkip(fastv=fastv, kv_ratio=kv_ratio, kv_start=kv_start)


def record(n: int, threads: int, kinds: list[str]) -> dict:
    """Describe the test scenes with every kind and way: {configuration: {texts, ...}}."""
    from ros2_gmskip.runtime.defaults import ensure_bundle
    from ros2_gmskip.runtime.factory import create_backend
    from ros2_gmskip.runtime import DEFAULT_PROMPT
    from ros2_gmskip.scenes import load_samples

    samples = load_samples('test', n)
    out = {}
    for kind in kinds:
        full, tokens, weights, ways = KINDS[kind]
        t0 = time.perf_counter()
        bundle = ensure_bundle(full=full, tokens=token_settings(tokens), fused_weights=weights)
        print(f'{kind}: bundle {bundle} ({time.perf_counter() - t0:.0f} s)', flush=True)
        for graph, drafts in ways:
            name = f'{kind}/{graph}/drafts={drafts}'
            backend = create_backend('onnxruntime', bundle=bundle, threads=threads, graph=graph,
                                     draft_tokens=drafts)
            texts = [backend.describe(s.image, DEFAULT_PROMPT, 48).text for s in samples]
            info = backend.info
            info = info.to_dict() if hasattr(info, 'to_dict') else dict(info)
            out[name] = {'texts': texts, 'decoder_graph': info.get('decoder_graph'),
                         'draft_tokens': info.get('draft_tokens'), 'bundle': str(bundle)}
            print(f'  {name}: {info.get("decoder_graph")}, {len(texts)} texts', flush=True)
    return out


def compare(now: dict, before: dict) -> int:
    """Print identical k/n per configuration; the number of configurations that differ."""
    differ = 0
    for name in sorted(set(now) | set(before)):
        if name not in now or name not in before:
            print(f'{name}: only in {"the record" if name in before else "this run"}')
            differ += 1
            continue
        a, b = now[name]['texts'], before[name]['texts']
        same = sum(x == y for x, y in zip(a, b))
        ok = same == len(a) == len(b)
        differ += not ok
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        detail = '' if first is None else f'; first difference, scene {first}: ' \
            f'{a[first]!r} vs {b[first]!r}'
        print(f'{"✓" if ok else "✗"} {name}: {same}/{len(b)} identical{detail}')
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--n', type=int, default=50, help='test scenes (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--kinds', default=','.join(KINDS),
                        help='bundle kinds, comma-separated (default: all)')
    parser.add_argument('--out', type=Path, required=True, help='JSON to write')
    parser.add_argument('--compare', type=Path, default=None, help='a JSON this script wrote')
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(',') if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f'unknown kinds {unknown}: expected some of {", ".join(KINDS)}')
    now = record(args.n, args.threads, kinds)
    args.out.write_text(json.dumps(now, indent=1) + '\n')
    print(f'wrote {args.out}')
    if args.compare is None:
        return 0
    before = json.loads(args.compare.read_text())
    before = {k: v for k, v in before.items() if k.split('/')[0] in kinds}
    return 1 if compare(now, before) else 0


if __name__ == '__main__':
    sys.exit(main())
