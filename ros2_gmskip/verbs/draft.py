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
Build the n-gram draft table that lets the runtime decode speculatively.

The table maps the last 1..order-1 generated tokens to the token that most often followed them in
the training captions. The ONNX Runtime backend feeds up to 4 such guesses per decoder run and
keeps those the model's own greedy choice confirms, so the text is greedy decoding's, token for
token, in fewer decoder runs (ros2_gmskip/runtime/draft.py says why, on a CPU, one run over a few
rows costs much less than as many runs over one). A bad table costs speed, never output.

Writes MODEL/draft_ngrams.json (or --out); `ros2-gmskip export` copies it into every bundle made
from the model afterwards (the bundle cache is keyed by the table: cached bundles are exported
again on their next use).
Prints how many tokens one decoder run would keep on held-out captions (--check), per number of
guesses: the speed-up to expect where the model says what the captions say.

usage examples:
  ros2-gmskip draft                                   # the default model, 5000 train captions
  ros2-gmskip draft --model models/mine --data data/scenes_train --n 20000 --order 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ros2_gmskip.argtypes import model_dir_or_default, positive_int

HELP = 'build the n-gram draft table for speculative decoding (same text, fewer decoder runs)'

MAX_GUESSES = 6             # the --check table's columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder with tokenizer.json (default: the embedded model)')
    parser.add_argument('--data', default='train',
                        help='captions to learn from: a split name (rendered) or a COCO-style '
                             'folder (default: %(default)s)')
    parser.add_argument('--n', type=positive_int, default=5000,
                        help='number of captions (default: %(default)s)')
    parser.add_argument('--order', type=positive_int, default=4,
                        help='n-gram order: contexts of up to order-1 tokens (default: '
                             '%(default)s)')
    parser.add_argument('--check', default='val',
                        help='held-out captions for the tokens-per-run table: a split name or '
                             'folder (default: %(default)s)')
    parser.add_argument('--check-n', type=positive_int, default=500,
                        help='number of held-out captions (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output file (default: MODEL/draft_ngrams.json)')


def _captions(data: str, n: int, desc: str) -> list[str]:
    """`n` reference captions: rendered from a split's seeds (with a progress bar), or read."""
    from ros2_gmskip.scenes.dataset import load_folder
    from ros2_gmskip.scenes.render import render_scene
    from ros2_gmskip.scenes.splits import split_seeds, SPLITS
    from tqdm import tqdm

    if data in SPLITS:     # the caption needs the full-size render: object order follows bboxes
        return [render_scene(seed)[1].caption
                for seed in tqdm(split_seeds(data, n), desc=desc, unit='scene')]
    return [c for s in load_folder(Path(data), n=n) for c in s.captions[:1]]


def _eos_id(model_dir: Path) -> int:
    """Return the stop token generation ends on (generation_config.json, else config.json)."""
    from ros2_gmskip.errors import ModelLoadError

    for name in ('generation_config.json', 'config.json'):
        path = model_dir / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            eos = cfg.get('eos_token_id', (cfg.get('text_config') or {}).get('eos_token_id'))
            if eos is not None:
                return int(eos[0] if isinstance(eos, list) else eos)
    raise ModelLoadError(f'model folder {str(model_dir)!r} names no eos_token_id in '
                         'generation_config.json or config.json')


def tokens_per_run(draft, sequences: list[list[int]], guesses: int) -> float:
    """Tokens one speculative decoder run keeps on average, if the model generated `sequences`."""
    runs = kept = 0
    for ids in sequences:
        i = 0
        while i < len(ids):
            drafts = draft.propose(ids[:i], guesses)
            a = 0
            while a < len(drafts) and i + a < len(ids) and drafts[a] == ids[i + a]:
                a += 1
            step = min(a + 1, len(ids) - i)
            i += step
            runs += 1
            kept += step
    return kept / max(runs, 1)


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.errors import ModelLoadError
    from ros2_gmskip.runtime.draft import DRAFT_FILE, NgramDraft
    from tokenizers import Tokenizer

    from ros2_gmskip.folders import check_writable

    model_dir = model_dir_or_default(args.model)
    if args.order < 2:
        raise ModelLoadError(f'--order must be at least 2, got {args.order}')
    check_writable(args.out or model_dir / DRAFT_FILE, '--out')
    tok_path = model_dir / 'tokenizer.json'
    if not tok_path.is_file():
        raise ModelLoadError(f'model folder {str(model_dir)!r} has no tokenizer.json')
    tokenizer = Tokenizer.from_file(str(tok_path))
    eos = _eos_id(model_dir)

    def encode(captions: list[str]) -> list[list[int]]:
        return [tokenizer.encode(c, add_special_tokens=False).ids + [eos] for c in captions]

    train = encode(_captions(args.data, args.n, f'captions {args.data}'))
    draft = NgramDraft.build(train, order=args.order)
    out = draft.save(args.out or model_dir / DRAFT_FILE,
                     source={'data': args.data, 'n': len(train), 'eos_token_id': eos})
    held = encode(_captions(args.check, args.check_n, f'check {args.check}'))
    print(f'wrote {out}: {len(draft.table)} contexts (order {args.order}) from {len(train)} '
          f'captions of {args.data}')
    print(f'tokens kept per decoder run on {len(held)} captions of {args.check} '
          '(greedy decoding: 1.00):')
    for k in range(1, MAX_GUESSES + 1):
        per_run = tokens_per_run(draft, held, k)
        print(f'  {k} guess{"es" if k > 1 else "  "} per run: {per_run:.2f}')
    return 0
