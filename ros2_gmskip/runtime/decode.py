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
Decode greedily over a bundle's decoder segments: the one decode loop every engine runs.

    loop = DecodeLoop(runners, embed_table, stop_ids, token_skip=TokenSkip.from_dict(...),
                      draft=NgramDraft.load(...), draft_tokens=4)
    out = loop.generate(inputs_embeds, max_new_tokens=48, image_rows=image_rows)
    out.ids, out.prefill_ms, out.decode_ms

One request, with one runner per decoder segment (runtime/runner.py; the engine is the runner's
business):

1. Prefill. The prompt's rows (1, T, C) run through the segments in order, each keeping its KV
   cache. Between them, FastV: after the segment that ends at its K, the image rows are ranked by
   what the last prompt row pays them (head-averaged, in block K-1; ties keep the earlier row) and
   only the ceil((1-R) n) best go on, with every text row, in their order (K = 0: a seeded random
   subset before segment 0). Every row keeps its ORIGINAL position, so RoPE and the positions of
   generated tokens are those of the full sequence.
2. Visual KV removal. The cache rows of the dropped image tokens (all but the stride rule's
   retained ones, tokenskip.settings) are compacted away in every segment from `kv_start` on.
   Each segment tracks its own cache length; cached keys were rotated at their own positions, so
   nothing shifts.
3. Decode. `speculative_loop`: each run feeds the last kept token plus up to `draft_tokens`
   guesses from the draft table (runtime/draft.py) through every segment and keeps the guesses
   the model's greedy choice confirms. Plain greedy decoding is this loop with no guesses, so
   both end on exactly the same rules: at most `max_new_tokens` tokens, a stop token ends the
   loop and is not returned (transformers' greedy `generate`).

Token skipping needs segments split where it acts (bundle_format: FastV's K, KV removal's first
layer) and runners that take explicit positions; `DecodeLoop` refuses settings its segments cannot
run with one line saying what to export. A request longer than the runners' caches goes to
`fallback` (the fused runners' portable twins), or fails with `too_long`'s advice.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, Sequence

import numpy as np
from ros2_gmskip.errors import BundleError, EngineError
from ros2_gmskip.runtime.draft import NgramDraft
from ros2_gmskip.runtime.runner import SegmentRunner
from ros2_gmskip.runtime.token_skip import (dropped_image_rows, keep_rows, random_image_rows,
                                            rank_image_rows)
from ros2_gmskip.tokenskip.settings import TokenSkip


@dataclass
class DecodeOutput:
    """Generated ids (stop token excluded) and where the time went."""

    ids: np.ndarray          # (n,) int64
    prefill_ms: float        # the prefill through every segment, token skipping, first argmax
    decode_ms: float         # the decoder runs after it
    decode_steps: int        # tokens the decode produced (greedy: one decoder run each)
    stopped: bool            # True: a stop token ended it; False: max_new_tokens reached
    decode_runs: int | None = None   # decoder runs, where drafts made them fewer than the steps


Verify = Callable[[int, list[int], int], Sequence[int]]
Propose = Callable[[int, int], list[int]]


def speculative_loop(token: int, verify: Verify, propose: Propose, max_new_tokens: int,
                     stop_ids: frozenset[int], out: np.ndarray) -> tuple[int, int, bool, int]:
    """
    Keep greedy decoding's tokens, checking guessed ones in the same decoder run.

    `propose(n, limit)`: up to `limit` guessed ids to follow out[:n] ([] for plain greedy).
    `verify(token, drafts, n)`: one decoder run over `token` + `drafts` (the cache holds
    everything before `token`) -> the greedy choice after each of those rows. A draft is kept
    while it equals the choice before it, so every kept token is the model's own greedy choice;
    the first choice that differs (or follows the last draft) is the next `token`. Rows of
    refused drafts stay in the cache past its length and are overwritten. Return (kept, steps,
    stopped, runs): `steps` counts the tokens a one-token-per-run loop would have run for.
    """
    n = steps = runs = 0
    while True:
        if token in stop_ids:
            return n, steps, True, runs
        out[n] = token
        n += 1
        if n == max_new_tokens:
            return n, steps, False, runs
        drafts = propose(n, max_new_tokens - n)
        choices = verify(token, drafts, n)
        runs += 1
        i = 0
        while i < len(drafts) and int(choices[i]) == drafts[i]:
            steps += 1
            if drafts[i] in stop_ids:
                return n, steps, True, runs
            out[n] = drafts[i]
            n += 1
            if n == max_new_tokens:
                return n, steps, False, runs
            i += 1
        token = int(choices[i])
        steps += 1


def _no_drafts(n: int, limit: int) -> list[int]:
    return []


class DecodeLoop:
    """Greedy decoding (with FastV, KV removal and drafts) over one runner per segment."""

    def __init__(self, runners: Sequence[SegmentRunner], embed_table: np.ndarray,
                 stop_ids: Sequence[int], token_skip: TokenSkip = TokenSkip(),
                 draft: NgramDraft | None = None, draft_tokens: int = 0,
                 fallback: DecodeLoop | None = None, where: str = 'bundle',
                 too_long: str = 'ask for fewer new tokens') -> None:
        """
        Check that the runners can run `token_skip`; BundleError saying what to export if not.

        `draft` with `draft_tokens` >= 1: speculative decoding, where the runners take that many
        rows per run. `fallback`: the loop for requests longer than the runners' caches;
        without one, such a request is an EngineError ending in `too_long`. `where` names the
        bundle in errors.
        """
        if draft_tokens < 0:
            raise ValueError(f'draft_tokens must be >= 0, got {draft_tokens}')
        self.runners = list(runners)
        self.embed_table = embed_table                  # (vocab, C) float32, C-contiguous
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.token_skip = token_skip
        self.fallback, self.where, self.too_long = fallback, where, too_long
        self.num_layers = self.runners[-1].segment.stop
        fastv = token_skip.fastv
        self.fastv = fastv if fastv is not None and fastv.active(self.num_layers) else None
        self._check_token_skip()
        rows = [r.max_rows for r in self.runners if r.max_rows is not None]
        self.draft_tokens = min([draft_tokens, *(m - 1 for m in rows)]) if draft else 0
        self.draft = draft if self.draft_tokens > 0 else None
        limits = [r.max_length for r in self.runners if r.max_length is not None]
        self.max_length = min(limits) if limits else None
        self._alloc(self.max_length or 256)

    @property
    def speculative(self) -> bool:
        """Return whether `generate` checks drafted tokens (runtime/draft.py)."""
        return self.draft is not None

    def _check_token_skip(self) -> None:
        """Raise BundleError for token-skip settings these segments cannot run."""
        ts, segments = self.token_skip, [r.segment for r in self.runners]
        if self.fastv is not None and self.fastv.k > 0 and not any(
                s.ranks and s.stop == self.fastv.k for s in segments):
            raise BundleError(f'{self.where} has no decoder split at FastV K={self.fastv.k}: '
                              f'export it with --fastv {self.fastv.k},{self.fastv.r:g}')
        if ts.kv_ratio and ts.kv_start and not any(s.first == ts.kv_start for s in segments):
            raise BundleError(f'{self.where} has no decoder split at layer {ts.kv_start} for KV '
                              'removal: export it with that setting')
        skips = self.fastv is not None or ts.kv_ratio > 0
        if skips and not all(r.explicit_positions for r in self.runners):
            raise BundleError(f'{self.where}: its fused decoder takes RoPE positions from the '
                              f'cache length, so it cannot skip tokens ({ts.describe()}): run '
                              'the portable graph, or export the bundle with these settings')

    def _alloc(self, length: int) -> None:
        """(Re)allocate the position and token buffers for sequences up to `length` tokens."""
        self._length = length
        self._positions = np.arange(length, dtype=np.int64)             # absolute positions
        self._tokens = np.empty(length, dtype=np.int64)                 # generated ids

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                 image_rows: np.ndarray | None = None) -> DecodeOutput:
        """Continue `inputs_embeds` (1, T, C) greedily; `image_rows`: the image tokens' rows."""
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
        B, T, _ = inputs_embeds.shape
        assert B == 1, f'batch {B}: the decode loop runs one image at a time'
        if self.max_length is not None and T + max_new_tokens > self.max_length:
            if self.fallback is not None:
                return self.fallback.generate(inputs_embeds, max_new_tokens, image_rows)
            raise EngineError(f'prompt ({T} tokens) + {max_new_tokens} new tokens exceed what '
                              f'{self.where} was built for ({self.max_length}): '
                              f'{self.too_long}')
        if T + max_new_tokens > self._length:
            self._alloc(max(2 * self._length, T + max_new_tokens))
        image_rows = (np.zeros(0, dtype=np.int64) if image_rows is None
                      else np.asarray(image_rows, dtype=np.int64))
        t0 = time.perf_counter()
        logits, lengths = self._prefill(np.ascontiguousarray(inputs_embeds, dtype=np.float32),
                                        image_rows)
        token = int(logits.argmax())
        t1 = time.perf_counter()

        def verify(token: int, drafts: list[int], n: int) -> np.ndarray:
            # n - 1 kept tokens since the prefill sit in every segment's cache
            ids = [token, *drafts]
            h = self.embed_table[ids][None] if drafts else self.embed_table[token:token + 1][None]
            positions = self._positions[T + n - 1:T + n - 1 + len(ids)]
            for runner, cached in zip(self.runners, lengths):
                h = runner.run(h, positions, cached + n - 1)
            return h[0].argmax(axis=-1)                                  # (rows,)

        propose = self._propose if self.draft is not None else _no_drafts
        n, steps, stopped, runs = speculative_loop(token, verify, propose, max_new_tokens,
                                                   self.stop_ids, self._tokens)
        t2 = time.perf_counter()
        return DecodeOutput(ids=self._tokens[:n].copy(), prefill_ms=(t1 - t0) * 1e3,
                            decode_ms=(t2 - t1) * 1e3, decode_steps=steps, stopped=stopped,
                            decode_runs=runs if self.draft is not None else None)

    def _prefill(self, h: np.ndarray, image_rows: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Run the prompt through the segments, FastV and KV removal: (last logits, lengths)."""
        index = np.arange(h.shape[1])                 # original index of each current row
        n_img = len(image_rows)
        fastv = self.fastv if n_img else None
        if fastv is not None and fastv.k == 0:
            keep = keep_rows(len(index), image_rows,
                             random_image_rows(image_rows, fastv.n_keep(n_img), fastv.seed))
            h, index = np.ascontiguousarray(h[:, keep]), index[keep]
        indexes = []
        for runner in self.runners:
            out = runner.prefill(h, self._positions[index])
            indexes.append(index)
            if runner.segment.last:
                return out.out[0, -1], self._remove_visual_kv(indexes, image_rows)
            h = out.out
            if runner.segment.ranks and fastv is not None and fastv.k > 0:
                # rows are the original indices here: nothing was pruned before K > 0
                kept = rank_image_rows(out.attention, image_rows, fastv.n_keep(n_img))
                keep = keep_rows(len(index), image_rows, kept)
                h, index = np.ascontiguousarray(h[:, keep]), index[keep]
        raise BundleError(f'{self.where}: its decoder segments end without logits: re-export '
                          'it with ros2-gmskip export')

    def _remove_visual_kv(self, indexes: list[np.ndarray], image_rows: np.ndarray) -> list[int]:
        """Compact the dropped image tokens out of the caches from kv_start on; their lengths."""
        ts = self.token_skip
        lengths = [len(i) for i in indexes]
        if ts.kv_ratio <= 0 or not len(image_rows):
            return lengths
        dropped = dropped_image_rows(image_rows, ts.kv_ratio)
        for s, runner in enumerate(self.runners):
            if runner.segment.first < ts.kv_start:
                continue
            keep = np.flatnonzero(~np.isin(indexes[s], dropped))
            if len(keep) < lengths[s]:
                runner.compact(keep)
                lengths[s] = len(keep)
        return lengths

    def _propose(self, n: int, limit: int) -> list[int]:
        """Guess what follows the `n` ids kept so far (at most `limit`)."""
        return self.draft.propose(self._tokens[:n], min(self.draft_tokens, limit), self.stop_ids)
