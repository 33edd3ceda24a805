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
Greedy decoding with token skipping over a segmented decoder: FastV and visual KV removal.

    loop = TokenSkipDecoder(sessions, bundle.segments, embed_table, num_kv_heads, head_dim,
                            stop_ids, TokenSkip.from_dict(bundle.token_skip))
    out = loop.generate(inputs_embeds, max_new_tokens, image_positions)

The numpy twin of `tokenskip.fastv` + `tokenskip.kv_removal` (the torch reference); the bundle's
export validation checks the two produce the same text. Batch 1, no padding.

Prefill: the prompt runs through the segments in order (see exporters/onnx_export.py for why the
decoder is split). After the segment that ends at FastV's K, the image tokens are ranked by
`last_token_attention` (what the last prompt token pays them, head-averaged, in block K-1; ties
keep the earlier token) and only the ceil((1-R) n) best stay, with every text token, in their
original order: the next segments run on fewer rows. Every row keeps its ORIGINAL position id, so
RoPE and the positions of generated tokens are those of the full sequence. K = 0: a seeded random
subset (settings.random_slots) is chosen before the first segment.

KV removal: after the prefill, the cache slots of the dropped visual tokens (all image tokens
except the stride rule's retained ones, settings.retained_slots) are gathered away from the
`present.*` tensors of every segment from `kv_start` on. Each segment tracks its own cache length,
so its attention mask (all ones: batch 1) has the right size; cached keys were rotated at their
own positions, so nothing shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.decode import DecodeBuffers, DecodeOutput
from ros2_gmskip.tokenskip.settings import random_slots, retained_slots, TokenSkip


@dataclass
class _Segment:
    session: object
    first: int
    stop: int
    input_name: str
    output_name: str
    ranks: bool
    past_names: list[str]
    present_names: list[str]


def keep_rows(n_rows: int, image_rows: np.ndarray, kept_image_rows: np.ndarray) -> np.ndarray:
    """Sorted row indices to keep: every non-image row plus `kept_image_rows`."""
    keep = np.ones(n_rows, dtype=bool)
    keep[image_rows] = False
    keep[kept_image_rows] = True
    return np.flatnonzero(keep)


def rank_image_rows(scores: np.ndarray, image_rows: np.ndarray, n_keep: int) -> np.ndarray:
    """Return the `n_keep` image rows with the highest scores (ties: the earlier row), sorted."""
    order = np.argsort(-scores[image_rows], kind='stable')
    return np.sort(image_rows[order[:n_keep]])


class TokenSkipDecoder(DecodeBuffers):
    """
    Greedy decode over decoder segments, with FastV in the prefill and visual KV removal after.

    Stop tokens, max tokens and timing are as in decode.GreedyDecoder.
    """

    def __init__(self, sessions: list, segments: list[dict], embed_table: np.ndarray,
                 num_kv_heads: int, head_dim: int, stop_ids: tuple[int, ...],
                 token_skip: TokenSkip, device: str = 'cpu', device_id: int = 0,
                 max_length: int = 256, where: str = 'bundle') -> None:
        """`where` names the bundle in the errors for settings its segments cannot run."""
        self.embed_table = embed_table
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.token_skip = token_skip
        self.device, self.device_id = device, device_id
        self.segments: list[_Segment] = [self._segment(session, seg)
                                         for session, seg in zip(sessions, segments)]
        self.num_layers = self.segments[-1].stop
        self._check_settings(where)
        self._empty_past = np.zeros((1, num_kv_heads, 0, head_dim), dtype=np.float32)
        self._alloc(max_length)

    REQUIRED_INPUTS = ('attention_mask', 'position_ids')

    def _segment(self, session, seg: dict) -> _Segment:
        """Return the runtime view of a manifest segment; BundleError if its graph lacks inputs."""
        first, stop = seg['layers']
        s = _Segment(session, first, stop, seg['input'], seg['output'], bool(seg['ranks']),
                     [f'past_key_values.{i}.{k}' for i in range(first, stop)
                      for k in ('key', 'value')],
                     [f'present.{i}.{k}' for i in range(first, stop) for k in ('key', 'value')])
        names = {i.name for i in session.get_inputs()}
        missing = [n for n in [s.input_name, *self.REQUIRED_INPUTS, *s.past_names]
                   if n not in names]
        if missing:
            raise BundleError(f'decoder graph {seg["file"]} lacks inputs {missing[:3]}: bundle '
                              'and manifest disagree: re-run ros2-gmskip export')
        return s

    def _check_settings(self, where: str) -> None:
        """Raise BundleError for token-skip settings the segments' split points cannot run."""
        token_skip = self.token_skip
        fastv = token_skip.fastv
        self.fastv = fastv if fastv is not None and fastv.active(self.num_layers) else None
        if self.fastv is not None and self.fastv.k > 0 and not any(
                s.ranks and s.stop == self.fastv.k for s in self.segments):
            raise BundleError(f'{where} has no decoder split at FastV K={self.fastv.k}: export '
                              f'it with --fastv {self.fastv.k},{self.fastv.r:g}')
        if token_skip.kv_ratio and token_skip.kv_start and not any(
                s.first == token_skip.kv_start for s in self.segments):
            raise BundleError(f'{where} has no decoder split at layer {token_skip.kv_start} for '
                              'KV removal: export it with that setting')

    def _run(self, seg: _Segment, h: np.ndarray, positions: np.ndarray, total: int, past):
        """One segment -> (main output (1, t, C|V) numpy, attention (1, S) or None, presents)."""
        binding = seg.session.io_binding()
        binding.bind_cpu_input(seg.input_name, h)
        binding.bind_cpu_input('attention_mask', self._mask[:, :total])
        binding.bind_cpu_input('position_ids', positions)
        for i, name in enumerate(seg.past_names):
            value = self._empty_past if past is None else past[i]
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(seg.output_name, 'cpu')
        if seg.ranks:
            binding.bind_output('last_token_attention', 'cpu')
        for name in seg.present_names:
            binding.bind_output(name, self.device, self.device_id)
        seg.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        k = 2 if seg.ranks else 1
        attention = outputs[1].numpy() if seg.ranks else None
        return outputs[0].numpy(), attention, outputs[k:]

    def _prefill(self, embeds: np.ndarray, image_positions: np.ndarray):
        """-> (last logits (V,), per-segment presents, per-segment original index of each slot)."""
        T = embeds.shape[1]
        index = np.arange(T)                              # original index of each current row
        h = embeds
        n_img = len(image_positions)
        if self.fastv is not None and self.fastv.k == 0 and n_img:
            slots = random_slots(n_img, self.fastv.n_keep(n_img), self.fastv.seed)
            keep = keep_rows(T, image_positions, image_positions[slots])
            h, index = np.ascontiguousarray(h[:, keep]), index[keep]
        pasts, indexes = [], []
        for seg in self.segments:
            out, attention, presents = self._run(seg, h, np.ascontiguousarray(index[None]),
                                                 len(index), None)
            pasts.append(presents)
            indexes.append(index)
            if seg.output_name == 'logits':
                return out[0, -1], pasts, indexes
            h = out
            if seg.ranks and self.fastv is not None and n_img:
                # Rows == original indices here (nothing was pruned before K > 0).
                kept = rank_image_rows(attention[0], image_positions, self.fastv.n_keep(n_img))
                keep = keep_rows(len(index), image_positions, kept)
                h, index = np.ascontiguousarray(h[:, keep]), index[keep]
        raise BundleError('decoder segments end without a logits graph: re-run ros2-gmskip export')

    def _remove_visual_kv(self, pasts: list, indexes: list[np.ndarray],
                          image_positions: np.ndarray) -> list[int]:
        """Drop the removed visual tokens' slots in place; returns each segment's cache length."""
        ts = self.token_skip
        lengths = [len(i) for i in indexes]
        n_img = len(image_positions)
        if ts.kv_ratio <= 0 or not n_img:
            return lengths
        retained = image_positions[retained_slots(n_img, ts.kv_ratio)]
        dropped = np.setdiff1d(image_positions, retained)
        for s, seg in enumerate(self.segments):
            if seg.first < ts.kv_start:
                continue
            keep = np.flatnonzero(~np.isin(indexes[s], dropped))
            if len(keep) == lengths[s]:
                continue
            pasts[s] = self._drop_slots(s, pasts[s], keep)
            lengths[s] = len(keep)
        return lengths

    def _drop_slots(self, s: int, past: list, keep: np.ndarray) -> list:
        """Segment `s`'s cache `past` with only the slots `keep` (sorted), in that order."""
        return [np.ascontiguousarray(p.numpy()[:, :, keep]) for p in past]

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                 image_positions: np.ndarray | None = None) -> DecodeOutput:
        """
        Return the greedy continuation of `inputs_embeds` (1, T, C).

        `image_positions` (n,): the image tokens' indices in the prompt.
        """
        T = self._start(inputs_embeds, max_new_tokens)
        pasts: list = []
        lengths: list[int] = []

        def prefill() -> int:
            return self._begin(inputs_embeds, image_positions, lengths, pasts)

        def step(token: int, n: int) -> int:
            return self._step(token, T + n - 1, lengths, pasts)

        return self._timed_greedy(prefill, step, max_new_tokens)

    def _begin(self, inputs_embeds: np.ndarray, image_positions: np.ndarray | None,
               lengths: list[int], pasts: list) -> int:
        """
        Run a request's prefill, FastV and KV removal -> the first token.

        Fills `lengths` (each segment's cache length) and `pasts` (each segment's cache).
        """
        image_positions = (np.zeros(0, dtype=np.int64) if image_positions is None
                           else np.asarray(image_positions, dtype=np.int64))
        logits, segment_pasts, indexes = self._prefill(
            np.ascontiguousarray(inputs_embeds, dtype=np.float32), image_positions)
        lengths.extend(self._remove_visual_kv(segment_pasts, indexes, image_positions))
        pasts.extend(segment_pasts)
        return int(logits.argmax())

    def _step(self, token: int, position: int, lengths: list[int], pasts: list) -> int:
        """
        Run one decode step of `token` at absolute `position` through every segment.

        Each segment's cache length is in `lengths`, its cache in `pasts`, both updated.
        -> the next token.
        """
        h = self.embed_table[token:token + 1][None]                      # (1, 1, C) view
        positions = self._positions[:, position:position + 1]
        for s, seg in enumerate(self.segments):
            h, _, pasts[s] = self._run(seg, h, positions, lengths[s] + 1, pasts[s])
            lengths[s] += 1
        return int(h[0, -1].argmax())
