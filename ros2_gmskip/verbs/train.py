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
Train the default VLM (LLaVA: SigLIP vision + Llama decoder) from scratch on procedural scenes.

Deterministic for a given --seed and thread count; renders fresh train-split scenes every step.
The shipped model was made with the defaults:

    ros2-gmskip train --out models/gmskip-llava-scenes

Then measure it:  ros2-gmskip evaluate --model models/gmskip-llava-scenes --split test --n 500

Skip-FFN (Skip-Vision): `--skip-ffn 0.75` lets 3/4 of the image tokens bypass every decoder FFN in
stage 2; the summary (training_log.json) records the FFN rows computed and the stage-2 seconds.
bench/skip_ffn.sh compares it with normal training at the same steps and seed:

    ros2-gmskip train --out DIR --scenes 4000 --vision-steps 400 --steps 300 --skip-ffn 0.75
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ros2_gmskip.argtypes import fraction, positive_int

HELP = 'train the default scene-description VLM from scratch (CPU, deterministic)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ros2_gmskip.vlm.configs import TrainConfig
    d = TrainConfig()
    parser.add_argument('--out', type=Path, required=True, help='output model folder')
    parser.add_argument('--steps', type=positive_int, default=d.steps, help='optimizer steps')
    parser.add_argument('--vision-steps', type=positive_int, default=d.vision_steps,
                        help='stage-1 (vision pretraining) steps')
    parser.add_argument('--scenes', type=positive_int, default=d.scenes,
                        help='train-split scenes rendered once into the training cache')
    parser.add_argument('--batch-size', type=positive_int, default=d.batch_size)
    parser.add_argument('--lr', type=float, default=d.lr, help='peak learning rate')
    parser.add_argument('--layerdrop', type=fraction, default=d.layerdrop,
                        help='max probability of skipping a decoder block per batch (0 = off)')
    parser.add_argument('--drop-suffix', type=fraction, default=d.drop_suffix, metavar='PROB',
                        help='share of stage-2 batches that exit early: their last 1..L/2 decoder '
                             'blocks are all skipped, so removing late blocks (GM-Skip) costs '
                             'little (0 = off; the shipped model: 0.25)')
    parser.add_argument('--blind-answers', type=fraction, default=d.blind_answers,
                        metavar='PROB',
                        help='share of stage-2 batches whose answer tokens cannot attend to the '
                             'image tokens, as after visual KV removal (ratio 1) at inference; '
                             'the prompt tokens learn to carry the image (0 = off)')
    parser.add_argument('--skip-ffn', type=fraction, default=d.skip_ffn, metavar='RATIO',
                        help='Skip-Vision: share of visual tokens that bypass every decoder FFN '
                             'in stage 2 (still attended to); the retained ones are a fixed '
                             'stride, '
                             'the same rule kv-removal uses at inference (0 = off)')
    parser.add_argument('--seed', type=int, default=d.seed)
    parser.add_argument('--threads', type=positive_int, default=d.threads,
                        help='torch CPU threads')
    parser.add_argument('--eval-every', type=int, default=d.eval_every,
                        help='log val accuracy on 32 scenes every N steps (0 = never)')
    parser.add_argument('--force', action='store_true', help='overwrite a non-empty --out')


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.errors import GmSkipError
    from ros2_gmskip.vlm.configs import TrainConfig
    from ros2_gmskip.vlm.train import train

    from ros2_gmskip.folders import check_writable

    if args.out.exists() and not args.out.is_dir():
        raise GmSkipError(f'--out {str(args.out)!r} is a file: pass a folder for the model')
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise GmSkipError(f'output folder {str(args.out)!r} is not empty: pass --force to '
                          'overwrite it')
    check_writable(args.out, '--out')             # before the training, not after it
    cfg = TrainConfig(steps=args.steps, vision_steps=args.vision_steps, scenes=args.scenes,
                      skip_ffn=args.skip_ffn, batch_size=args.batch_size, lr=args.lr,
                      layerdrop=args.layerdrop, drop_suffix=args.drop_suffix,
                      blind_answers=args.blind_answers, seed=args.seed, threads=args.threads,
                      eval_every=args.eval_every)
    summary = train(cfg, args.out)
    print(f'trained {summary["parameters"] / 1e6:.2f}M parameters for {cfg.steps} steps in '
          f'{summary["train_seconds"] / 60:.1f} min '
          f'(stage 2: {summary["stage2_seconds"] / 60:.1f} min); '
          f'final loss {summary["final_loss"]:.4f}; saved to {args.out}')
    return 0
