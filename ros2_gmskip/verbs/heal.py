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
Heal a pruned model: fine-tune what a skip plan leaves, with its token skipping on, and save it.

GM-Skip removes blocks without training and FastV drops image tokens the model never learnt to do
without; both cost a little accuracy. `heal` removes the plan's blocks, then trains the smaller
model for a few hundred steps on train-split scenes through the same FastV / KV-removal forward
that inference runs (ros2_gmskip/vlm/heal.py). Output: a standard transformers folder with its
processor, draft table, `gmskip_heal.json` (settings, val accuracy before / after, seconds) and
`plans/healed.json`, which carries the token settings to export, bench, replay and the node.

    ros2-gmskip heal --out /tmp/healed      # the embedded model's shipped plan + its FastV
    ros2-gmskip heal --plan models/gmskip-llava-scenes/plans/accuracy-reverse-for-healing.json \
        --fastv 1,0.5 --out /tmp/healed-10 --plot heal.png    # = models/gmskip-llava-scenes-healed
    ros2-gmskip evaluate --model /tmp/healed-10 --plan /tmp/healed-10/plans/healed.json \
        --split test --n 2000
    ros2-gmskip bench --pruned-model /tmp/healed-10 --n 50 --threads 1 --rounds 3

The token settings are the plan's (`calibrate --tokens`), replaced by --fastv / --kv-removal /
--kv-start (or dropped by --no-plan-tokens), as in every verb.
Deterministic for a given --seed and thread count.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import json
import logging
from pathlib import Path

from ros2_gmskip.argtypes import existing_dir, existing_file, positive_float, positive_int
from ros2_gmskip.verbs.token_options import add_token_arguments, token_skip_from_args

HELP = 'fine-tune a GM-Skip pruned model with its token skipping on (healing), save it'
MANIFEST = 'gmskip_heal.json'
MANIFEST_FORMAT = 'ros2_gmskip/heal@1'
HEALED_PLAN = Path('plans') / 'healed.json'
LOG = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ros2_gmskip.vlm.configs import HealConfig
    d = HealConfig()
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='model folder the plan was made for (default: the embedded model)')
    parser.add_argument('--plan', type=existing_file, default=None,
                        help="skip plan from calibrate (default: the embedded model's shipped "
                             'plan)')
    parser.add_argument('--out', type=Path, required=True, help='folder for the healed model')
    add_token_arguments(parser, "the plan's tokens entry, during healing and after (heal "
                                'trains KV removal at ratio 1 from layer 0 only)')
    parser.add_argument('--steps', type=positive_int, default=d.steps, help='optimizer steps')
    parser.add_argument('--lr', type=positive_float, default=d.lr, help='peak learning rate')
    parser.add_argument('--batch-size', type=positive_int, default=d.batch_size)
    parser.add_argument('--scenes', type=positive_int, default=d.scenes,
                        help='train-split scenes rendered once into the training cache')
    parser.add_argument('--val-n', type=positive_int, default=d.val_n,
                        help='val scenes scored before and after healing')
    parser.add_argument('--eval-every', type=int, default=d.eval_every,
                        help=f'log val accuracy on {d.eval_n} scenes every N steps (0 = never)')
    parser.add_argument('--plot', type=Path, default=None, metavar='PNG',
                        help='write the loss and val-accuracy curve of the run as a PNG')
    parser.add_argument('--seed', type=int, default=d.seed)
    parser.add_argument('--threads', type=positive_int, default=d.threads,
                        help='torch CPU threads')
    parser.add_argument('--force', action='store_true', help='replace a non-empty --out')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="allow the model folder's own Python code (off by default)")


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.argtypes import model_dir_or_default
    from ros2_gmskip.errors import GmSkipError, PlanError
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.runtime.defaults import default_model_dir, default_plan_path
    from ros2_gmskip.tokenskip.settings import TokenSkip
    from ros2_gmskip.verbs.prune import _check_out

    model_dir = model_dir_or_default(args.model)
    default = Path(model_dir).resolve() == default_model_dir().resolve()
    plan_path = args.plan or (default_plan_path() if default else None)
    if plan_path is None:
        raise GmSkipError('no --plan: heal needs the skip plan made for --model (ros2-gmskip '
                          'calibrate)')
    plan = load_plan(plan_path, model_dir=model_dir)            # refuses other weights
    tokens = token_skip_from_args(args, plan.tokens) or TokenSkip.from_dict(plan.tokens)
    try:
        from ros2_gmskip.vlm.heal import check_healable
        check_healable(tokens)
    except ValueError as err:
        raise PlanError(str(err)) from None
    _check_out(args.out, args.force, model_dir)
    if args.plot:
        from ros2_gmskip.folders import check_writable
        check_writable(args.plot, '--plot')
    summary = heal_and_save(model_dir, plan_path, plan, tokens, args)
    acc = summary['val_accuracy']
    if args.plot:
        from ros2_gmskip.gmskip.plot import plot_healing
        plot_healing(summary['log'], args.plot, acc, summary['heal_config']['eval_n'],
                     title=f'healing {len(plan.removed_blocks)}/{plan.model.num_blocks} blocks '
                           f'removed, {tokens.describe()}')
        print(f'wrote {args.plot}')
    print(f'healed {model_dir} minus blocks {list(plan.removed_blocks)} with '
          f'{tokens.describe()}: val accuracy ({acc["n"]} scenes) {acc["before"]:.4f} -> '
          f'{acc["after"]:.4f} in {summary["train_seconds"] / 60:.1f} min of training; '
          f'saved to {args.out}')
    return 0


def heal_and_save(model_dir: Path, plan_path: Path, plan, tokens, args) -> dict:
    """Remove the plan's blocks, heal, write the folder (complete or not at all)."""
    from ros2_gmskip import __version__
    from ros2_gmskip.folders import written_in_place
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.plan import (
        check_plan_fits,
        MetricRecord,
        ModelRef,
        plan_id,
        save_plan,
        SkipPlan,
        weights_sha256,
    )
    from ros2_gmskip.verbs.prune import copy_draft_table
    from ros2_gmskip.vlm.blocks import family_of, get_stack, remove_blocks
    from ros2_gmskip.vlm.configs import HealConfig
    from ros2_gmskip.vlm.heal import heal
    from ros2_gmskip.vlm.loading import load_vlm

    model, processor = load_vlm(model_dir, trust_remote_code=args.trust_remote_code)
    check_plan_fits(plan, plan_path, model)
    before = get_stack(model, plan.stack).num_blocks
    remove_blocks(model, plan.removed_blocks, plan.stack)
    cfg = HealConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, scenes=args.scenes,
                     val_n=args.val_n, eval_every=args.eval_every, seed=args.seed,
                     threads=args.threads)
    summary = heal(model, processor, tokens, cfg)
    out = Path(args.out)
    with written_in_place(out, '--out') as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        copy_draft_table(model_dir, tmp)
        sha = weights_sha256(tmp)
        acc = summary['val_accuracy']
        healed = SkipPlan(
            model=ModelRef(path=str(out), sha256=sha, family=family_of(model),
                           num_blocks=get_stack(model, plan.stack).num_blocks),
            removed_blocks=[],
            metric=MetricRecord(name='accuracy', baseline=acc['before'], final=acc['after'],
                                split='val', n=acc['n']),
            objective=Objective(lam=0.0), strategy='heal', protect_first=0, trajectory=[],
            evaluations=0, stack=plan.stack, tokens=tokens.to_dict())
        save_plan(healed, tmp / HEALED_PLAN)
        manifest = {
            'format': MANIFEST_FORMAT,
            'source': {'path': str(model_dir), 'sha256': plan.model.sha256},
            'plan': {'path': str(plan_path), 'id': plan_id(plan),
                     'removed_blocks': list(plan.removed_blocks)},
            'num_blocks': {'before': before, 'after': healed.model.num_blocks},
            'tokens': tokens.to_dict(),
            'sha256': sha,
            **{k: v for k, v in summary.items() if k != 'log'},
            'created_by': f'ros2_gmskip {__version__}',
            'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'log': summary['log'],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + '\n', encoding='utf-8')
    return summary
