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
Time Qwen2-VL / Qwen2.5-VL on ONNX Runtime against transformers generate, full and pruned.

    .venv/bin/python bench/qwen_families.py --n 20 --rounds 3 --threads 1

Per family, on its tiny checkpoint (vlm/tiny_families.py, built into --work): exports the full
model and one with decoder blocks --remove removed (both validated: greedy text == generate on 3
test scenes), then describes --n test scenes at the camera size (480x640) with
  hf_full     processor + `generate` + decode, the full model (what a user runs without us)
  ort_full    the ONNX Runtime backend on the full bundle (preprocess + vision + decode), on
              its fused decoder graph (the default)
  ort_full_portable   the same on decoder.onnx, the plain-op graph TensorRT builds from
  ort_pruned  the fused graph of the pruned bundle
each configuration over every frame, --rounds times in rotated order, torch and ONNX Runtime on
--threads threads. Prints p50 per-frame latency, new tokens per frame, whether the texts equal
hf_full's (ort_full must: the same greedy text means the same number of new tokens), the p50 of
ms per new token (the pruned model's random weights say other things, at other lengths), and the
ratios ort_full / hf_full (goal <= 0.3) and ort_pruned / ort_full (per frame and per new
token); --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import time

FAMILIES = ('qwen2_vl', 'qwen2_5_vl')
CAMERA = (480, 640)


def _timed(describe, frames, times, per_token, texts, tokens) -> None:
    """Run `describe(frame) -> (text, new tokens)` on every frame; record times and outputs."""
    for i, frame in enumerate(frames):
        t = time.perf_counter()
        text, n = describe(frame)
        times.append((time.perf_counter() - t) * 1e3)
        per_token.append(times[-1] / max(n, 1))
        texts[i], tokens[i] = text, n


def bench_family(family: str, args) -> dict:
    """Export `family`'s tiny checkpoint full and pruned; time the three configurations."""
    import torch
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.exporters.qwen_vision import camera_frames
    from ros2_gmskip.exporters.validate import scene_images
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.vlm.generation import decode_new_tokens
    from ros2_gmskip.vlm.loading import load_vlm
    from ros2_gmskip.vlm.prompting import build_inputs
    from ros2_gmskip.vlm.tiny_families import save_tiny

    work = Path(args.work) / family
    model_dir = save_tiny(family, work / 'model')
    bundles = {}
    for name, removed in (('full', None), ('pruned', args.remove)):
        bundles[name] = export_bundle(model_dir, work / f'bundle-{name}', removed_blocks=removed,
                                      validate_n=3, max_new_tokens=args.max_new_tokens,
                                      threads=args.threads, camera_size=CAMERA).path
    model, processor = load_vlm(model_dir)
    model.eval()
    frames = camera_frames(scene_images(args.n), CAMERA)
    prompt = 'describe the scene.'
    eos = set(model.generation_config.eos_token_id if isinstance(
        model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])

    @torch.no_grad()
    def hf(frame):
        inputs = build_inputs(processor, [frame], prompt)
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        T = inputs['input_ids'].shape[1]
        new = [t for t in out[0, T:].tolist() if t not in eos]
        return decode_new_tokens(processor, out, T)[0], len(new)

    def ort(backend):
        def run(frame):
            r = backend.describe(frame, prompt, args.max_new_tokens)
            return r.text, r.tokens
        return run

    configs = {'hf_full': hf,
               'ort_full': ort(OrtBackend(bundles['full'], threads=args.threads)),
               'ort_full_portable': ort(OrtBackend(bundles['full'], threads=args.threads,
                                                   graph='portable')),
               'ort_pruned': ort(OrtBackend(bundles['pruned'], threads=args.threads))}
    for run in configs.values():                       # warm-up: first-call allocations
        run(frames[0])
    times = {name: [] for name in configs}
    per_token = {name: [] for name in configs}
    rounds = {name: [] for name in configs}
    texts = {name: [None] * len(frames) for name in configs}
    tokens = {name: [0] * len(frames) for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            before = len(times[name])
            _timed(configs[name], frames, times[name], per_token[name], texts[name],
                   tokens[name])
            rounds[name].append(statistics.median(times[name][before:]))
    p50 = {name: statistics.median(t) for name, t in times.items()}
    p50_token = {name: statistics.median(t) for name, t in per_token.items()}
    return {
        'family': family, 'n': len(frames), 'rounds': args.rounds, 'threads': args.threads,
        'removed_blocks': args.remove, 'camera': list(CAMERA),
        'p50_ms': {k: round(v, 2) for k, v in p50.items()},
        'round_p50_ms': {k: [round(v, 2) for v in vs] for k, vs in rounds.items()},
        'p50_ms_per_new_token': {k: round(v, 3) for k, v in p50_token.items()},
        'new_tokens_per_frame': {k: statistics.mean(v) for k, v in tokens.items()},
        'same_text_as_hf_full': {k: texts[k] == texts['hf_full'] for k in configs},
        'ort_full_vs_hf': round(p50['ort_full'] / p50['hf_full'], 3),
        'ort_pruned_vs_ort_full': round(p50['ort_pruned'] / p50['ort_full'], 3),
        'ort_pruned_vs_ort_full_per_token': round(p50_token['ort_pruned']
                                                  / p50_token['ort_full'], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--n', type=int, default=20, help='test scenes (default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=3, help='rounds (default: %(default)s)')
    parser.add_argument('--threads', type=int, default=1, help='threads (default: %(default)s)')
    parser.add_argument('--max-new-tokens', type=int, default=48)
    parser.add_argument('--remove', type=int, nargs='+', default=[1, 2],
                        help='decoder blocks the pruned bundle drops (default: %(default)s)')
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument('--work', default='/tmp/qwen_families_bench',
                        help='folder for the checkpoints and bundles (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=None, help='write the results as JSON')
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    results = [bench_family(family, args) for family in args.families]
    print(f'{"family":<11} {"config":<18} {"p50 ms":>8} {"ms/token":>8} {"tokens":>7} '
          f'{"same text":>9}')
    for res in results:
        for name, ms in res['p50_ms'].items():
            print(f'{res["family"]:<11} {name:<18} {ms:8.2f} '
                  f'{res["p50_ms_per_new_token"][name]:8.3f} '
                  f'{res["new_tokens_per_frame"][name]:7.1f} '
                  f'{str(res["same_text_as_hf_full"][name]):>9}')
        print(f'{res["family"]:<11} ort_full / hf_full {res["ort_full_vs_hf"]:.3f} (goal <= 0.3), '
              f'ort_pruned / ort_full {res["ort_pruned_vs_ort_full"]:.3f} per frame, '
              f'{res["ort_pruned_vs_ort_full_per_token"]:.3f} per new token')
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + '\n')


if __name__ == '__main__':
    main()
