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
Share what the ONNX Runtime and TensorRT backends do alike: the bundle's parts, one describe.

A subclass sets `bundle` (bundle_format.Bundle), calls `_load_parts()` (the embedding table,
`preprocess`, `tokenizer`, and for a ladder bundle its `ladder`), and provides
`decoder_loop` (decode.DecodeLoop), `rung_loops` (one loop per rung, `_rung_loops`) and
`image_embeds(pixel_values) -> (1 or tiles, n, C)`. `describe(..., rung=i)` runs rung i of a
ladder bundle (the runners of its own segments); without `rung`, the plan's. Every request is
checked first (`check_request`): a blank prompt, or one that with max_new_tokens does not fit
the model's context, is PromptError.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable

import numpy as np
from ros2_gmskip.bundle_format import EMBED, REEXPORT
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime import geometry, qwen
from ros2_gmskip.runtime.requests import check_prompt_text, check_request, context_length
from ros2_gmskip.runtime.results import DEFAULT_PROMPT, Latency, Result
from ros2_gmskip.runtime.tokenizer import PromptTokenizer


class BundleBackend:
    """Timed describe over a bundle's preprocessing, tokenizer, vision graph and decode loop."""

    def _load_parts(self) -> None:
        """Load the embedding table (checked against the manifest), preprocessing, tokenizer."""
        m = self.bundle.manifest
        self.embed_table = np.load(self.bundle.file(EMBED), allow_pickle=False)   # (vocab, C)
        want = (m.decoder.vocab_size, m.decoder.hidden_size)
        if self.embed_table.shape != want:
            raise BundleError(f'{self.bundle.where()}: {EMBED} has shape '
                              f'{self.embed_table.shape}, the manifest says {want}: {REEXPORT}')
        self.preprocess = (geometry.from_manifest(m.preprocess) if m.mrope is None
                           else qwen.GridPatches.from_manifest(m.preprocess, m.mrope))
        self.tokenizer = PromptTokenizer.from_bundle(self.bundle)
        self.ladder = None                       # runtime.ladder.Ladder of a ladder bundle
        if m.ladder is not None:
            from ros2_gmskip.runtime.ladder import Ladder
            record = m.ladder
            self.ladder = Ladder.from_rungs(
                [list(r.removed_blocks) for r in record.rungs], record.num_blocks,
                m.blocks_removed, [r.score for r in record.rungs],
                [r.flops_ratio for r in record.rungs])

    def _rung_loops(self, runners: list, make: Callable[[list, int], Any]) -> list:
        """Return [make(runners, 0)], or for a ladder bundle make(its runners, rung) per rung."""
        if self.ladder is None:
            return [make(runners, 0)]
        return [make([runners[s] for s in r.segments], i)
                for i, r in enumerate(self.bundle.manifest.ladder.rungs)]

    def _loop(self, rung: int | None) -> Any:
        """Return the decode loop of `rung` (None: the plan's); ValueError if there is none."""
        if rung is None:
            return self.decoder_loop
        if self.ladder is None:
            raise ValueError(f'rung {rung!r} given, but {self.bundle.where()} has no plan '
                             'ladder (export it with --ladder)')
        if isinstance(rung, bool) or not isinstance(rung, int) or not 0 <= rung <= self.ladder.top:
            raise ValueError(f'rung {rung!r} is not in the ladder (0..{self.ladder.top})')
        return self.rung_loops[rung]

    def prompt_positions(self, ids: np.ndarray) -> np.ndarray | None:
        """Return a Qwen prompt's M-RoPE positions (3, T); None: the rows' indices."""
        m = self.bundle.manifest.mrope
        if m is None:
            return None
        return qwen.prompt_positions(ids, self.tokenizer.image_token_id, m.grid_thw,
                                     m.merge_size)

    def _check_ready(self) -> None:
        """Raise if this backend cannot run (e.g. a build-only TensorRT backend); a hook."""

    def prompt_embeds(self, ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """Token embeddings of `ids` (T,) with the image embeddings (n, C) at the image tokens."""
        embeds = self.embed_table[ids]                                        # (T, C) copy
        embeds[ids == self.tokenizer.image_token_id] = image_embeds
        return embeds[None]                                                   # (1, T, C)

    @functools.cached_property
    def context(self) -> int | None:
        """Return the decoder's max_position_embeddings, from the bundle's config.json copy."""
        path = self.bundle.path / 'config.json'
        try:
            return context_length(json.loads(path.read_text(encoding='utf-8')))
        except (OSError, ValueError):
            return None                  # a bundle without config.json: nothing to check against

    def check_request(self, prompt: str, max_new_tokens: int) -> None:
        """Raise PromptError unless the templated prompt + max_new_tokens fit the context."""
        check_prompt_text(prompt)
        check_request(prompt, len(self.tokenizer.prompt_ids(prompt)), max_new_tokens,
                      self.context)

    def describe(self, image: np.ndarray, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 48, rung: int | None = None) -> Result:
        self._check_ready()
        loop = self._loop(rung)
        self.check_request(prompt, max_new_tokens)      # prompt ids are cached: a lookup
        t0 = time.perf_counter()
        pixel_values = self.preprocess(image)                     # (1 or tiles, 3, H, W)
        ids = self.tokenizer.prompt_ids(prompt)                               # (T,)
        t1 = time.perf_counter()
        image_embeds = self.image_embeds(pixel_values)                        # (1, n, C)
        t2 = time.perf_counter()
        image_embeds = image_embeds.reshape(-1, image_embeds.shape[-1])      # tiles: in order
        embeds = self.prompt_embeds(ids, image_embeds)                        # (1, T, C)
        merge_ms = (time.perf_counter() - t2) * 1e3
        image_rows = np.flatnonzero(ids == self.tokenizer.image_token_id)
        out = loop.generate(embeds, max_new_tokens, image_rows, self.prompt_positions(ids))
        text = self.tokenizer.decode(out.ids)
        t3 = time.perf_counter()
        latency = Latency(preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3,
                          prefill_ms=merge_ms + out.prefill_ms, decode_ms=out.decode_ms,
                          total_ms=(t3 - t0) * 1e3, decode_tokens=out.decode_steps)
        return Result(text=text, tokens=len(out.ids), latency=latency)
