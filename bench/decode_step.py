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
Time one fused decode step two ways, side by side: binding anew against the prepared StepBinding.

Binding every input and KV buffer anew is what the fused decode loop did before StepBinding
(runtime/ort_runners.py: FusedRunner.run binds nothing per step).

    .venv/bin/python bench/decode_step.py                  # the pruned default model's bundle
    .venv/bin/python bench/decode_step.py --bundle BUNDLE --steps 300 --rounds 5

Prints the median time per step of each way over the rounds (order alternated) and their ratio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--bundle', type=Path, default=None,
                        help='plain bundle with decoder.fused.onnx (default: the default model '
                             "pruned by its plan's blocks, without its token skipping, exported "
                             'once into the cache)')
    parser.add_argument('--steps', type=int, default=300, help='decode steps per round and way')
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()

    from ros2_gmskip.bundle_format import LOGITS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH
    from ros2_gmskip.runtime.defaults import ensure_bundle
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.runtime.ort_runners import FusedRunner
    from ros2_gmskip.scenes.dataset import load_samples
    from ros2_gmskip.tokenskip.settings import TokenSkip

    # TokenSkip(): blocks only, one fused segment (a token-skipping bundle has several)
    bundle = args.bundle or ensure_bundle(tokens=TokenSkip())
    backend = OrtBackend(bundle, threads=1, graph='fused')
    runners = backend.decoder_loop.runners
    if len(runners) != 1 or not isinstance(runners[0], FusedRunner):
        parser.error(f'{bundle}: its decoder has {len(runners)} segments; this comparison needs '
                     'one fused segment (export it without --fastv / --kv-removal)')
    runner = runners[0]
    image = load_samples('test', 1)[0].image
    T = len(backend.tokenizer.prompt_ids('describe the scene.'))
    backend.describe(image, 'describe the scene.')               # fills the KV buffers
    token = int(backend.tokenizer.stop_ids[0])
    rows = backend.embed_table[token:token + 1][None]             # (1, 1, C)

    def rebinding(n: int) -> None:
        session = runner.step_session
        binding = session.io_binding()
        binding.bind_cpu_input(runner.segment.input_name, rows)
        binding.bind_cpu_input(SEQLENS_K, np.array([T + n % 16], dtype=np.int32))
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.array(T + n % 16 + 1, dtype=np.int32))
        for past, present, value in runner._cache:
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output(LOGITS, 'cpu')
        session.run_with_iobinding(binding)

    def prepared(n: int) -> None:
        runner.run(rows, np.array([T + n % 16]), T + n % 16)

    times: dict[str, list[float]] = {'bind every step': [], 'StepBinding': []}
    ways = list(zip(times, (rebinding, prepared)))
    for r in range(args.rounds):
        for name, way in (ways if r % 2 == 0 else ways[::-1]):
            t = time.perf_counter()
            for n in range(args.steps):
                way(n)
            times[name].append((time.perf_counter() - t) / args.steps * 1e3)
    for name, values in times.items():
        print(f'{name:<16} {np.median(values):.3f} ms per step (rounds: '
              f'{", ".join(f"{v:.3f}" for v in values)})')
    ratio = np.median(times['StepBinding']) / np.median(times['bind every step'])
    print(f'StepBinding / bind every step = {ratio:.3f} '
          f'({backend.bundle.manifest.decoder.num_layers} blocks, 1 thread)')


if __name__ == '__main__':
    main()
