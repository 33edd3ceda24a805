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
Describe one image and print the latency breakdown.

Uses the ONNX Runtime backend on the GM-Skip-pruned default model unless told otherwise (the bundle
is exported once and cached; see `ros2-gmskip export`).

    ros2-gmskip describe frame.png
    ros2-gmskip describe frame.png --backend torch --model models/gmskip-llava-scenes --full
    ros2-gmskip describe frame.jpg --bundle my_bundle --prompt "describe the scene."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ros2_gmskip.argtypes import node_param
from ros2_gmskip.bundle_format import WEIGHTS
from ros2_gmskip.runtime.draft import DRAFT_TOKENS
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.verbs.token_options import add_token_arguments, token_skip_from_args

HELP = 'describe an image file and print the text and latency breakdown'


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every verb that runs a backend (describe, replay, demo)."""
    parser.add_argument('--backend', choices=('onnxruntime', 'torch', 'tensorrt'),
                        default='onnxruntime', help='inference backend (default: onnxruntime)')
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder (torch backend / export source; default: embedded)')
    parser.add_argument('--plan', type=Path, default=None,
                        help='skip plan (default: the shipped plan of the embedded model)')
    parser.add_argument('--full', action='store_true',
                        help='use the unpruned model (ignore the default plan)')
    parser.add_argument('--bundle', type=Path, default=None,
                        help='ONNX bundle folder (onnxruntime; default: cached export)')
    parser.add_argument('--engine', type=Path, default=None,
                        help='TensorRT engine folder (tensorrt backend)')
    parser.add_argument('--ort-graph', choices=('auto', 'fused', 'portable'), default='auto',
                        help='onnxruntime decoder graph: decoder.fused.onnx (ORT fused ops, KV '
                             'cache in place), decoder.onnx (plain ops, what TensorRT builds '
                             'from), or auto = fused where the bundle has it and it can run '
                             '(default: %(default)s)')
    parser.add_argument('--fused-weights', choices=WEIGHTS, default='fp32',
                        help='onnxruntime without --bundle: export (once, cached) and run the '
                             'quantized fused decoder: int8 prefill, int4 / int8 decode steps '
                             '(faster; the text may differ from generate on a few frames, see '
                             '`ros2-gmskip export --help`; default: %(default)s)')
    parser.add_argument('--draft-tokens', type=node_param('draft_tokens'),
                        default=DRAFT_TOKENS,
                        help="onnxruntime fused decoder: guessed tokens (from the bundle's "
                             'n-gram table, `ros2-gmskip draft`) checked per decoder run; the '
                             "text stays greedy decoding's, token for token; 0 = one token per "
                             'run (default: %(default)s)')
    parser.add_argument('--prompt', type=node_param('prompt'), default=DEFAULT_PROMPT,
                        help='text prompt (not blank; with the image and --max-new-tokens it '
                             "must fit the model's context)")
    parser.add_argument('--max-new-tokens', type=node_param('max_new_tokens'), default=48,
                        help='most tokens generated per image, 1..512 (default: %(default)s)')
    parser.add_argument('--max-image-pixels', type=node_param('max_image_pixels'),
                        default=None, metavar='N',
                        help='refuse images of more than N pixels (width x height), read from '
                             'the header before decoding (default: the node parameter '
                             "max_image_pixels' default, 50000000)")
    add_token_arguments(parser, "the plan's (torch, a cached export) or the bundle's (--bundle: "
                                'it must be split where the settings act)')


def backend_from_args(args: argparse.Namespace, ladder: Path | None = None):
    """Return the backend the options ask for; `ladder`: a plan ladder to run rungs of."""
    from ros2_gmskip.runtime.defaults import default_plan_path
    from ros2_gmskip.runtime.factory import create_backend
    opts = ({'graph': args.ort_graph, 'draft_tokens': args.draft_tokens}
            if args.backend == 'onnxruntime' else {})
    if args.fused_weights != 'fp32':
        opts['fused_weights'] = args.fused_weights
    if ladder is not None:
        opts['ladder'] = ladder
    plan = args.plan or (default_plan_path() if args.model is None and not args.full else None)
    tokens = token_skip_from_args(args, plan)
    if tokens is not None:
        opts['tokens'] = tokens
    return create_backend(args.backend, model=args.model, plan=args.plan, bundle=args.bundle,
                          engine=args.engine, full=args.full, **opts)


def max_image_pixels(args: argparse.Namespace) -> int:
    """Return --max-image-pixels, else the node's default (config/gmskip.param.yaml)."""
    if args.max_image_pixels is not None:
        return args.max_image_pixels
    from ros2_gmskip.ros.params import load_defaults
    return load_defaults()['max_image_pixels']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('image', type=Path, help='image file (png, jpeg, ...)')
    add_backend_arguments(parser)
    parser.add_argument('--json', action='store_true', help='print the result as JSON')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.images import read_image_file
    image = read_image_file(args.image, max_image_pixels(args))
    backend = backend_from_args(args)
    result = backend.describe(image, args.prompt, args.max_new_tokens)
    lat = result.latency
    if args.json:
        print(json.dumps({**result.to_dict(), 'backend': backend.name,
                          'info': backend.info.to_dict()}))
        return 0
    print(result.text)
    graph = backend.info.decoder_graph
    if graph and backend.info.draft_tokens:
        graph += f', {backend.info.draft_tokens} draft tokens per run'
    name = f'{backend.name} (decoder: {graph})' if graph else backend.name
    print(f'backend {name}: preprocess {lat.preprocess_ms:.1f} ms | vision '
          f'{lat.vision_ms:.1f} ms | prefill {lat.prefill_ms:.1f} ms | decode '
          f'{lat.decode_per_token_ms:.2f} ms/token x {lat.decode_tokens} | total '
          f'{lat.total_ms:.1f} ms | {result.tokens} tokens')
    return 0
