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
Export a VLM, pruned by a GM-Skip plan, to an ONNX bundle and validate it.

Writes BUNDLE/vision.onnx (pixels -> image embeddings), BUNDLE/decoder.onnx (decoder with explicit
KV cache inputs/outputs, only the blocks the plan keeps), embed_tokens.npy, the tokenizer/processor
files and manifest.json (hashes of the model, plan and every file; tokens; preprocessing;
validation results). For Llama-style decoders also BUNDLE/decoder.fused.onnx: the same decoder for
ONNX Runtime only (fused contrib ops, KV cache updated in place; what the onnxruntime backend runs
by default); TensorRT engines are always built from decoder.onnx. Validation always runs:
onnx.checker, the TensorRT op lint, names/axes/shapes, ONNX Runtime vs PyTorch values per output,
and greedy text vs transformers `generate` on --validate-n test scenes (for both decoder graphs).
The bundle appears at --out only when every check passed (an existing bundle there is replaced).

usage examples:
  ros2-gmskip export --out bundles/full                                  # embedded default model
  ros2-gmskip export --model models/gmskip-llava-scenes --plan plans/reverse.json \
      --out bundles/reverse
  ros2-gmskip export --plan plans/reverse.json --fastv 2,0.5 --kv-removal 1 --out bundles/tokens
  ros2-gmskip describe --backend onnxruntime --bundle bundles/reverse --image frame.png

Token skipping (FastV, Skip-Vision KV removal) comes from the plan's `tokens` entry (written by
`calibrate --tokens`) or from --fastv / --kv-removal; the decoder is then exported in segments
split at FastV's K (decoder.onnx, decoder.1.onnx, ... and their fused twins decoder.fused.onnx,
decoder.fused.1.onnx, ..., which take explicit positions), and validation compares the runtime's
greedy text with the torch reference using the same settings, for both kinds of graph.

--ladder PLAN.ladder.json (instead of --plan; calibrate writes it beside the plan): one bundle
that runs every rung of the plan ladder without re-export: each rung's decoder graphs as its own
plan bundle would have them, the weights of all of them stored once (weights.bin), each rung's
greedy text validated against the torch model pruned to that rung; the node and
`replay --latency-budget-ms` choose the rung per frame (docs/ladder.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import time

from ros2_gmskip.argtypes import (existing_dir, existing_file, frame_size, non_negative_int,
                                  positive_int)
from ros2_gmskip.bundle_format import VISION, WEIGHTS
from ros2_gmskip.verbs.token_options import add_token_arguments, token_skip_from_args

HELP = ('export a (pruned) VLM to an ONNX bundle (vision.onnx, decoder.onnx, manifest) and '
        'validate it')

OPSETS = (17, 18, 19, 20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='save_pretrained model folder (default: the embedded default model)')
    parser.add_argument('--plan', type=existing_file, default=None,
                        help='skip plan JSON from `ros2-gmskip calibrate`: its blocks are removed '
                             'before export (default: export the full model)')
    parser.add_argument('--ladder', type=existing_file, default=None, metavar='LADDER',
                        help='plan-ladder file (<plan>.ladder.json from calibrate / ladder), '
                             'instead of --plan: one bundle that runs every rung')
    add_token_arguments(parser, "the plan's (or the ladder's) tokens entry")
    parser.add_argument('--out', type=Path, required=True,
                        help='bundle folder to write (created; an existing bundle is replaced)')
    parser.add_argument('--opset', type=int, choices=OPSETS, default=17,
                        help='ONNX opset (TensorRT 10 parses up to 20; default: %(default)s)')
    parser.add_argument('--validate-n', type=non_negative_int, default=50,
                        help='test scenes whose greedy text must match transformers generate '
                             '(0 skips that check; default: %(default)s)')
    parser.add_argument('--max-new-tokens', type=positive_int, default=48,
                        help='token limit of the greedy text check (default: %(default)s)')
    parser.add_argument('--no-fused', action='store_true',
                        help='do not write decoder.fused.onnx (the onnxruntime backend then runs '
                             'decoder.onnx)')
    parser.add_argument('--fused-max-length', type=positive_int, default=None, metavar='N',
                        help="positions the fused decoder's KV buffers hold (prompt + generated "
                             "tokens; longer requests run on decoder.onnx). Default: the model's "
                             'max_position_embeddings, at most 2048')
    parser.add_argument('--fused-weights', choices=WEIGHTS, default='fp32',
                        help='int4 / int8: also write quantized copies of the fused decoder that '
                             'the runtime uses instead: decode steps with int4 / int8 weights '
                             '(ONNX Runtime MatMulNBits, blocks of 32; a step is weight streaming '
                             'on a CPU) and the prefill with dynamic int8 (MatMulInteger; a '
                             'prefill is a GEMM). The greedy text may change, and validation '
                             'refuses the bundle when more than 1 in 5 of the --validate-n test '
                             'scenes differ from generate (use 50 or more: a handful is too few '
                             'to judge; default: %(default)s)')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for PyTorch and ONNX Runtime during validation '
                             '(default: all)')
    parser.add_argument('--camera-size', type=frame_size, default=None, metavar='HxW',
                        help="the camera's frame size, e.g. 480x640: it fixes the tile grid and "
                             'prompt of models that split frames into tiles (SmolVLM, Idefics3) '
                             'and the patch grid, image token count and positions of Qwen2-VL / '
                             'Qwen2.5-VL; frames that give another grid are refused at run time '
                             '(default: the validation scenes, 480x640; fixed-size models '
                             'ignore it)')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.vlm.loading import default_model_dir
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or default_model_dir()
    started = time.perf_counter()

    def stage(text: str) -> None:
        print(f'[{time.perf_counter() - started:6.1f}s] {text}', flush=True)

    if args.ladder is not None and args.plan is not None:
        from ros2_gmskip.errors import BundleError
        raise BundleError(f'--ladder {str(args.ladder)!r} brings its own plan (a rung): give '
                          '--ladder or --plan, not both')
    tokens = token_skip_from_args(args, _ladder_tokens(args.ladder) if args.ladder else args.plan)
    result = export_bundle(model, args.out, plan=args.plan, tokens=tokens, opset=args.opset,
                           ladder=args.ladder,
                           validate_n=args.validate_n, max_new_tokens=args.max_new_tokens,
                           threads=args.threads, fused=not args.no_fused,
                           fused_max_length=args.fused_max_length,
                           fused_weights=args.fused_weights, camera_size=args.camera_size,
                           on_stage=stage,
                           on_check=lambda check: print(f'  {check.line()}', flush=True))
    m = result.manifest
    if m.ladder is None:
        files = [VISION, *[f for seg in m.segments for f in seg.files()]]
    else:                                # the rung graphs are small: their weights are shared
        files = [VISION, m.ladder.weights]
    sizes = ', '.join(f'{name} {(result.path / name).stat().st_size / 2 ** 20:.1f} MiB'
                      for name in files)
    if m.ladder is not None:
        sizes += f' and {len(m.segments)} rung graphs ({len(m.ladder.rungs)} rungs)'
    removed = m.blocks_removed
    pruned = f', {len(removed)} blocks removed {removed}' if removed else ''
    v = m.validation
    print(f'wrote {result.path}: {sizes} ({m.decoder.num_layers} decoder blocks in '
          f'{len(m.segments)} segment(s){pruned}; token skipping: {m.token_skip.describe()}), '
          f'opset {m.opset}')
    print(f'validation: {len(v["checks"])} checks passed; max |logit diff| '
          f'{v["max_abs_logit_diff"]:.1e} (tolerance {v["tolerance"]:.0e}); greedy text identical '
          f'on {v["identical_text"]} test scenes'
          + (f' (fused decoder: {v["fused_identical_text"]})' if v.get('fused_identical_text')
             else '') + ('' if m.ladder is None else f' for the plan rung {m.ladder.plan_rung}')
          + f'; {time.perf_counter() - started:.0f} s in all')
    if m.ladder is not None:
        for i, rung in enumerate(m.ladder.rungs):
            checks = rung.validation or {}
            print(f'  rung {i}: {len(rung.removed_blocks)} blocks removed, segments '
                  f'{list(rung.segments)}, greedy text identical on '
                  f'{checks.get("identical_text")} (fused: {checks.get("fused_identical_text")})')
    return 0


def _ladder_tokens(path: Path) -> dict | None:
    """Return a ladder file's `tokens` entry (what --fastv / --kv-removal apply over)."""
    from ros2_gmskip.gmskip.ladder import load_ladder
    return load_ladder(path, check_hash=False).tokens
