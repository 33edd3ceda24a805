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
Apply a skip plan: save a smaller model with the planned blocks physically removed.

Loads the model with transformers, checks the plan was made for these weights (sha256), removes
the blocks (the layer list shrinks, config layer counts and KV-cache layer indices are renumbered),
and saves a standard transformers folder (safetensors + config + processor files, plus the draft
table of `ros2-gmskip draft` if the source has one) that loads with `from_pretrained` and exports
like any other model. Writes `gmskip_prune.json` beside it:
plan id, removed blocks, source and output weight hashes. The output appears complete or not at
all (written to a temporary folder, then renamed).

usage examples:
  ros2-gmskip prune --model models/gmskip-default --plan plan.json --out models/gmskip-pruned
  ros2-gmskip prune --model DIR --plan plan.json --out DIR2 --force    # replace DIR2
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
import json
import logging
from pathlib import Path
import shutil

from ros2_gmskip import __version__
from ros2_gmskip.argtypes import existing_dir, existing_file, model_dir_or_default
from ros2_gmskip.errors import GmSkipError, ModelLoadError
from ros2_gmskip.folders import check_writable, written_in_place

HELP = 'apply a skip plan: save the model with the planned blocks removed'
MANIFEST = 'gmskip_prune.json'
MANIFEST_FORMAT = 'ros2_gmskip/prune@1'
# Files that mean "this folder has a processor / tokenizer to carry over".
PROCESSOR_FILES = ('processor_config.json', 'preprocessor_config.json', 'tokenizer.json',
                   'tokenizer_config.json', 'tokenizer.model', 'chat_template.json',
                   'chat_template.jinja')
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='model folder the plan was made for (default: the embedded '
                             'default model)')
    parser.add_argument('--plan', type=existing_file, required=True,
                        help='skip plan from ros2-gmskip calibrate')
    parser.add_argument('--out', type=Path, required=True, help='folder for the pruned model')
    parser.add_argument('--force', action='store_true',
                        help='replace --out if it exists and is not empty')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="allow the model folder's own Python code (off by default)")


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.gmskip.plan import check_plan_fits, load_plan, plan_id, weights_sha256
    from ros2_gmskip.vlm.blocks import family_of, get_stack, remove_blocks

    args.model = model_dir_or_default(args.model)
    out = Path(args.out)
    _check_out(out, args.force, args.model)
    plan = load_plan(args.plan, model_dir=args.model)          # refuses other weights
    model = _load_model(args.model, args.trust_remote_code)
    check_plan_fits(plan, args.plan, model)
    family = family_of(model)
    before = get_stack(model, plan.stack).num_blocks
    remove_blocks(model, plan.removed_blocks, plan.stack)
    after = get_stack(model, plan.stack).num_blocks

    with written_in_place(out, '--out') as tmp:
        model.save_pretrained(tmp)
        _copy_processor(args.model, tmp, args.trust_remote_code)
        copy_draft_table(args.model, tmp)
        manifest = {
            'format': MANIFEST_FORMAT,
            'plan_id': plan_id(plan),
            'plan': str(args.plan),
            'stack': plan.stack,
            'removed_blocks': list(plan.removed_blocks),
            'num_blocks': {'before': before, 'after': after},
            'family': family,
            'source': {'path': str(args.model), 'sha256': plan.model.sha256},
            'sha256': weights_sha256(tmp),
            'metric': {'name': plan.metric.name, 'baseline': plan.metric.baseline,
                       'final': plan.metric.final},
            'created_by': f'ros2_gmskip {__version__}',
            'created_at': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
    print(f'pruned {args.model} ({family}): removed {plan.stack} blocks '
          f'{list(plan.removed_blocks)} ({before} -> {after}), plan {manifest["plan_id"]}; '
          f'saved to {out}')
    return 0


def _check_out(out: Path, force: bool, model_dir: Path) -> None:
    """Refuse --out before the work: a file, the source, a non-empty folder, not writable."""
    if out.exists() and not out.is_dir():
        raise GmSkipError(f'--out {str(out)!r} is a file: give a folder for the pruned model')
    if out.resolve() == Path(model_dir).resolve():
        raise GmSkipError(f'--out {str(out)!r} is the source model folder: choose another')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise GmSkipError(f'--out {str(out)!r} exists and is not empty: choose another folder '
                          'or pass --force to replace it')
    check_writable(out, '--out')


def _load_model(model_dir: Path, trust_remote_code: bool):
    """Load the model in its checkpoint dtype (bf16 stays bf16), offline, from safetensors."""
    from ros2_gmskip.vlm.loading import check_model_dir, check_remote_code
    import transformers
    check_model_dir(model_dir)        # one-line errors: no config.json, corrupt safetensors ...
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, use_safetensors=True,
            local_files_only=True, dtype='auto')
    except Exception as err:       # transformers raises OSError / ValueError / KeyError ...
        check_remote_code(model_dir, trust_remote_code)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ModelLoadError(f'cannot load a vision-language model from {str(model_dir)!r}: '
                             f'{type(err).__name__}: {first}') from err
    return model.eval()


def _copy_processor(model_dir: Path, out: Path, trust_remote_code: bool) -> None:
    """Carry the processor / tokenizer over (re-saved as `vlm.processors` loads it)."""
    if not any((Path(model_dir) / name).exists() for name in PROCESSOR_FILES):
        logger.warning('no processor or tokenizer files in %s: the pruned model is saved '
                       'without them', model_dir)
        return
    from ros2_gmskip.vlm.processors import load_processor
    load_processor(model_dir, trust_remote_code=trust_remote_code).save_pretrained(out)


def copy_draft_table(model_dir: Path, out: Path) -> None:
    """
    Carry the n-gram draft table (`ros2-gmskip draft`) over to the pruned model.

    Same tokenizer, same captions, so the smaller model's bundle still decodes speculatively.
    """
    from ros2_gmskip.runtime.draft import DRAFT_FILE
    if (Path(model_dir) / DRAFT_FILE).is_file():
        shutil.copy2(Path(model_dir) / DRAFT_FILE, Path(out) / DRAFT_FILE)
