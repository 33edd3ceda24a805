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
Draft tokens for speculative greedy decoding: an n-gram table of the task's reference captions.

Why: a decoder run over a few new rows costs much less than that many runs over one, because a
run streams every weight matrix once however many rows it carries (pruned default model, 1 thread,
bench/speculative.py: 2 rows 1.4x one row, 4 rows 1.5x, 7 rows 2.1x). So the decode loop
(decode.speculative_loop) feeds the last kept token plus up to k tokens guessed here, and keeps
the model's own greedy choice at every row as long as the guesses agree with it. The output is
greedy decoding's, token for token; only the number of decoder runs changes.

Guessing is cheap because our captions follow a grammar ("a red car close on the left, ...,
rainy night."): after "on" comes "the", after "the" "left" or "right", after "stop" "sign". The
table maps the last 1..order-1 tokens (START before the first generated token) to the token that
most often followed them in the training captions; `propose` backs off from the longest context
it knows. Built by `ros2-gmskip draft`, stored next to the weights as draft_ngrams.json, copied
into every bundle by `ros2-gmskip export` (and covered by the bundle manifest's hashes).

    draft = NgramDraft.build([[7, 30, 12, 15, 2], ...], order=4)    # token ids, stop token last
    draft.save(Path('models/m/draft_ngrams.json'), source={'data': 'train', 'n': 5000})
    draft = NgramDraft.load(path, vocab_size=42)
    draft.propose(generated_ids, k=3)                                # e.g. [9, 8, 13]
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from ros2_gmskip.bundle_format import DRAFT
from ros2_gmskip.errors import BundleError
from ros2_gmskip.formats import read_format_json, write_json_atomic

FORMAT = 'ros2_gmskip.ngram_draft/1'
DRAFT_FILE = DRAFT                 # next to the weights, and in the bundle
START = -1          # the context before the first generated token
DRAFT_TOKENS = 4    # guesses per run: the fastest of 0-4 and 6 in two runs of bench/speculative.py


class NgramDraft:
    """Context (tuple of up to order-1 ids) -> the most frequent next id."""

    def __init__(self, table: dict[tuple[int, ...], int], order: int) -> None:
        if order < 2:
            raise ValueError(f'order must be >= 2 (a context of at least one token), got {order}')
        self.table = table
        self.order = order

    @classmethod
    def build(cls, sequences: Iterable[Sequence[int]], order: int = 4) -> 'NgramDraft':
        """
        Build the table from token id sequences as the model generates them (stop token included).

        Ties go to the smaller id, so the same captions always give the same table.
        """
        counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for seq in sequences:
            ids = [START, *(int(i) for i in seq)]
            for i in range(1, len(ids)):
                for n in range(1, min(order - 1, i) + 1):
                    counts[tuple(ids[i - n:i])][ids[i]] += 1
        table = {ctx: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]
                 for ctx, c in counts.items()}
        return cls(table, order)

    def propose(self, history: Sequence[int], k: int, stop_ids: frozenset[int] = frozenset()
                ) -> list[int]:
        """
        Return up to `k` guesses for the tokens after `history` (the ids generated so far).

        Fewer where no context of the table matches, none after a stop id.
        """
        ctx = [int(i) for i in history[-(self.order - 1):]]
        if len(ctx) < self.order - 1:
            ctx.insert(0, START)
        out: list[int] = []
        for _ in range(k):
            for n in range(min(self.order - 1, len(ctx)), 0, -1):
                nxt = self.table.get(tuple(ctx[-n:]))
                if nxt is not None:
                    break
            else:
                break
            out.append(nxt)
            if nxt in stop_ids:
                break
            ctx.append(nxt)
        return out

    def save(self, path: Path, source: dict | None = None) -> Path:
        """Write the table as JSON: {format, order, source, table: [[context..., next], ...]}."""
        rows = sorted([*ctx, nxt] for ctx, nxt in self.table.items())
        return write_json_atomic(Path(path), {'format': FORMAT, 'order': self.order,
                                              'source': source or {}, 'table': rows},
                                 indent=None, what='draft table')

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> 'NgramDraft':
        """
        Read a table `save` wrote.

        BundleError (one line, what to re-run) if it is unreadable, of another format, or names
        ids outside the vocabulary.
        """
        where = f'draft table {str(path)!r}'
        data = read_format_json(path, FORMAT, BundleError, where, 're-run ros2-gmskip draft, or '
                                'delete the file to decode one token per run')
        order, table = data.get('order'), {}
        if not isinstance(order, int) or order < 2:
            raise BundleError(f'{where}: order must be an integer >= 2, got {order!r}: re-run '
                              'ros2-gmskip draft')
        for row in data.get('table', []):
            if (not isinstance(row, list) or not 2 <= len(row) <= order
                    or not all(isinstance(i, int) for i in row)
                    or not all(START <= i < vocab_size for i in row[:-1])
                    or not 0 <= row[-1] < vocab_size):
                raise BundleError(f'{where}: bad row {row!r} (ids must lie in 0..{vocab_size - 1}'
                                  f', contexts 1..{order - 1} long): re-run ros2-gmskip draft')
            table[tuple(row[:-1])] = row[-1]
        return cls(table, order)
