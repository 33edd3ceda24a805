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
Give every verb the same token-skipping options, merged with the plan's in one way.

    add_token_arguments(parser)                         # --fastv --kv-removal --kv-start ...
    tokens = token_skip_from_args(args, plan_path)      # None: nothing given, use the plan's

Every verb that runs or exports a model with token skipping (export, evaluate, heal, bench,
describe, replay, demo) takes these four options and means the same by them: the plan's `tokens`
entry (`calibrate --tokens`) is the base, `--no-plan-tokens` drops it, and --fastv / --kv-removal
/ --kv-start replace its knobs one by one (tokenskip.settings.TokenSkip.with_overrides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ros2_gmskip.argtypes import fastv_setting, fraction, non_negative_int


def add_token_arguments(parser: argparse.ArgumentParser, base: str = "the plan's") -> None:
    """Add --fastv, --kv-removal, --kv-start and --no-plan-tokens (`base`: what they override)."""
    group = parser.add_argument_group(f'token skipping (default: {base}; each option replaces '
                                      'one of its knobs)')
    group.add_argument('--fastv', type=fastv_setting, default=None, metavar='K,R',
                       help='FastV: after decoder block K-1 keep the ceil((1-R) n) image tokens '
                            'the last prompt token attends to most (K counts the blocks left '
                            'after the plan; e.g. 2,0.5; R = 0 turns it off)')
    group.add_argument('--kv-removal', type=fraction, default=None, metavar='RATIO',
                       help='Skip-Vision: after the prefill, drop the KV-cache entries of this '
                            'share of the image tokens (1 = all, 0 = none)')
    group.add_argument('--kv-start', type=non_negative_int, default=None, metavar='LAYER',
                       help='KV removal only in decoder blocks >= LAYER (0 = every block)')
    group.add_argument('--no-plan-tokens', action='store_true',
                       help=f'ignore {base} token skipping (the blocks are still removed)')


def given(args: argparse.Namespace) -> bool:
    """Return whether any token-skipping option was given."""
    return (args.fastv is not None or args.kv_removal is not None or args.kv_start is not None
            or args.no_plan_tokens)


def token_skip_from_args(args: argparse.Namespace, plan: Path | dict | None):
    """
    Return the TokenSkip the options ask for over `plan`'s, or None when none was given.

    `plan`: a plan file, its `tokens` entry (a dict), or None. None back means "the plan's or the
    bundle's own settings", which the callers apply where they load the model.
    """
    from ros2_gmskip.tokenskip.settings import resolve_token_skip

    if not given(args):
        return None
    if isinstance(plan, (str, Path)) and not args.no_plan_tokens:
        from ros2_gmskip.gmskip.plan import plan_token_skip
        plan = plan_token_skip(plan)
    return resolve_token_skip(plan, fastv=args.fastv, kv_ratio=args.kv_removal,
                              kv_start=args.kv_start, use_plan=not args.no_plan_tokens)
