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
Build TensorRT engines from an ONNX bundle, on the machine that will run them.

Engines are specific to the GPU model and the TensorRT version, so the bundle is exported on a dev
machine (`ros2-gmskip export`), copied to the car, and the engines are built there. One engine per
graph (`vision.<precision>.engine`, `decoder.<precision>.engine`); the decoder gets two
optimization profiles, prefill (the whole prompt) and decode (one token, growing KV cache).
`engine_manifest.json` records TensorRT version, GPU, precision, profiles and the hashes of
engines and source graphs; the runtime refuses engines that do not match. An up-to-date build is
skipped (--rebuild forces it). Without --build-only the engines are then loaded and one test scene
is described as a check.

Jetson AGX Orin (JetPack 6, TensorRT 10.3):
    ros2-gmskip build-engine bundles/gmskip --precision fp16 --workspace-mb 2048 \
        --timing-cache ~/.cache/ros2_gmskip/orin.timing --out engines/orin-fp16
    ros2-gmskip build-engine bundles/gmskip --precision fp16 --dla-core 0 --out engines/orin-dla0

x86 + NVIDIA GPU (pip install tensorrt cuda-python):
    ros2-gmskip build-engine bundles/gmskip --precision fp16 --max-batch 4 --max-prompt 256 \
        --out engines/x86-fp16
    ros2-gmskip build-engine bundles/gmskip --precision fp32 --build-only --out engines/x86-fp32

--precision int8 needs a bundle whose ONNX graphs are explicitly quantized (Q/DQ nodes, e.g. from
NVIDIA ModelOpt): TensorRT 10 deprecated calibration-based INT8. See export/README.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ros2_gmskip.argtypes import non_negative_int, positive_int

HELP = 'build TensorRT engines (one per ONNX graph) with prefill/decode profiles and a manifest'
PRECISIONS = ('fp16', 'bf16', 'int8', 'fp32')       # = ros2_gmskip.runtime.trt_profiles

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bundle', type=Path, help='ONNX bundle folder (from ros2-gmskip export)')
    parser.add_argument('--out', type=Path, required=True, help='engine folder to write')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16',
                        help='engine precision (default: fp16; int8 needs a Q/DQ-quantized '
                             'bundle)')
    parser.add_argument('--workspace-mb', type=positive_int, default=4096,
                        help='builder workspace limit in MiB (default: 4096)')
    parser.add_argument('--dla-core', type=non_negative_int, default=None,
                        help='run the vision graph on this DLA core (Jetson; fp16/int8 only; '
                             'layers DLA lacks fall back to the GPU)')
    parser.add_argument('--max-batch', type=positive_int, default=1,
                        help='largest batch the engines take (default: 1)')
    parser.add_argument('--max-prompt', type=positive_int, default=128,
                        help='largest prompt in tokens, image tokens included (default: 128)')
    parser.add_argument('--max-new-tokens', type=positive_int, default=48,
                        help='most tokens generated per image (default: 48)')
    parser.add_argument('--timing-cache', type=Path, default=None,
                        help='TensorRT timing cache file: read if present, written after '
                             '(makes rebuilds on the same GPU much faster)')
    parser.add_argument('--build-only', action='store_true',
                        help='build and exit, without the check run (as Autoware build_only)')
    parser.add_argument('--rebuild', action='store_true',
                        help='build even if the engines in --out are up to date')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.bundle_format import load_bundle
    from ros2_gmskip.runtime import trt_engines as em
    from ros2_gmskip.runtime.trt_backend import gpu_info, import_tensorrt
    from ros2_gmskip.runtime.trt_build import build_engines, BuildConfig, planned_cache_key
    from ros2_gmskip.runtime.trt_profiles import Limits

    from ros2_gmskip.folders import check_writable

    check_writable(args.out, '--out')           # before a build of minutes, not after it
    if args.timing_cache is not None:
        check_writable(args.timing_cache, '--timing-cache')
    trt = import_tensorrt()                     # EngineError: "TensorRT is not installed ..."
    bundle = load_bundle(args.bundle)
    cfg = BuildConfig(precision=args.precision, workspace_mb=args.workspace_mb,
                      dla_core=args.dla_core,
                      limits=Limits(args.max_batch, args.max_prompt, args.max_new_tokens),
                      timing_cache=args.timing_cache, verbose=getattr(args, 'verbose', False))
    gpu = gpu_info()
    reason = 'asked to (--rebuild)'
    if not args.rebuild:
        key = planned_cache_key(bundle, cfg, trt.__version__, gpu)
        reason = em.needs_rebuild(args.out, trt.__version__, gpu.name, gpu.compute_capability,
                                  bundle=bundle, cache_key=key)
    if reason is None:
        print(f'engines in {args.out} are up to date (engine id {key}); --rebuild forces a build')
    else:
        log.info('building engines: %s', reason)
        manifest = build_engines(bundle, args.out, cfg, gpu=gpu)
        for graph, entry in manifest['engines'].items():
            size_mb = (args.out / entry['file']).stat().st_size / 2**20
            print(f'{graph}: {args.out / entry["file"]} ({size_mb:.1f} MiB)')
        print(f'TensorRT {trt.__version__} on {gpu}, {cfg.precision.value}, engine id '
              f'{manifest["cache_key"]}: {args.out / em.MANIFEST}')
    if args.build_only:
        return 0
    return _check_run(args, bundle)


def _check_run(args: argparse.Namespace, bundle) -> int:
    """Load the engines and describe one test scene (what a first node start would do)."""
    from ros2_gmskip.runtime.trt_backend import TrtBackend
    from ros2_gmskip.scenes import render_scene, split_seeds

    image, _ = render_scene(split_seeds('test', 1)[0])
    with TrtBackend(args.out, bundle, verify=False) as backend:
        result = backend.describe(image, max_new_tokens=args.max_new_tokens)
    lat = result.latency
    print(f'check: {result.text!r}')
    print(f'check: vision {lat.vision_ms:.1f} ms | prefill {lat.prefill_ms:.1f} ms | decode '
          f'{lat.decode_per_token_ms:.2f} ms/token x {lat.decode_tokens} | total '
          f'{lat.total_ms:.1f} ms')
    return 0
