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
The greedy decode loop over the exported decoder graph, with a KV cache and preallocated buffers.

One `describe` = one prefill (the whole prompt: image embeddings + text), then one decoder run
per generated token, each feeding back the previous run's `present.*` tensors as
`past_key_values.*`:

    prefill   inputs_embeds (1, T, C), attention_mask (1, T), position_ids (1, T),
              past (1, kv, 0, d)
    step n    inputs_embeds (1, 1, C), attention_mask (1, T+n), position_ids (1, 1) = T+n-1,
              past = present of step n-1 (1, kv, T+n-1, d)

What keeps the loop lean:
- the attention mask (all ones: batch 1, no padding), the position ids and the token buffer are
  allocated once, at the largest length seen, and sliced per step (views, no copies);
- the KV tensors never leave ONNX Runtime: outputs are bound with IOBinding and the OrtValues are
  bound back as the next step's inputs (on CUDA they stay on the GPU); only `logits` comes to
  numpy;
- the next token's embedding is a row view of the embedding table (no graph, no copy);
- argmax is numpy's on the last position's logits.

Semantics match transformers' greedy `generate`: at most `max_new_tokens` decoder outputs are
consumed, a stop token ends the loop and is not returned.

Other engines reuse the loop by subclassing (the TensorRT backend does): `generate` only calls
`_run(embeds, start, total, past) -> (past', last_logits (V,))`, where `past` is whatever the
previous `_run` returned (None before the prefill), and reads `embed_table`, `stop_ids`,
`max_length` and the buffers `_alloc(length)` makes.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, Sequence

import numpy as np
from ros2_gmskip.errors import BundleError


@dataclass
class DecodeOutput:
    """Generated ids (stop token excluded) and where the time went."""

    ids: np.ndarray          # (n,) int64
    prefill_ms: float        # first decoder run (whole prompt) + first argmax
    decode_ms: float         # the `decode_steps` runs after it
    decode_steps: int        # tokens the decode produced (greedy: one decoder run each)
    stopped: bool            # True: a stop token ended it; False: max_new_tokens reached
    decode_runs: int | None = None   # decoder runs, where drafts made them fewer than the steps


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


def _no_drafts(n: int, limit: int) -> list[int]:
    return []


def _one_step(step: Callable[[int, int], int]) -> Callable[[int, list[int], int], Sequence[int]]:
    """`step(token, n)` as a `verify` that is never given guesses."""
    return lambda token, drafts, n: (step(token, n),)


def greedy_loop(token: int, step: Callable[[int, int], int], max_new_tokens: int,
                stop_ids: frozenset[int], out: np.ndarray) -> tuple[int, int, bool]:
    """
    Run the loop every decoder shares, from the prefill's first token.

    A stop token ends it (not kept), else the token goes to `out` and `step(token, n)` (n tokens
    kept so far) returns the next one, until `max_new_tokens` are kept. -> (kept, decoder steps
    run, stopped). `speculative_loop` without guesses, so both end on exactly the same rules.
    """
    n, steps, stopped, _ = speculative_loop(token, _one_step(step), _no_drafts, max_new_tokens,
                                            stop_ids, out)
    return n, steps, stopped


def speculative_loop(token: int, verify: Callable[[int, list[int], int], Sequence[int]],
                     propose: Callable[[int, int], list[int]], max_new_tokens: int,
                     stop_ids: frozenset[int], out: np.ndarray) -> tuple[int, int, bool, int]:
    """
    Run the decode loop with guesses: greedy decoding's result in fewer decoder runs.

    runtime/draft.py says why.

    `propose(n, limit)`: up to `limit` guessed ids to follow out[:n]. `verify(token, drafts, n)`:
    one decoder run over `token` + `drafts` (the cache holds everything before `token`) -> the
    greedy choice after each of those rows (len(drafts) + 1 ids). A draft is kept while it equals
    the choice before it, so every kept token is the model's own greedy choice; the first choice
    that differs (or follows the last draft) is the next `token`. Rows of refused drafts stay in
    the cache past its length and are overwritten. -> (kept, steps, stopped, runs): `steps` counts
    the tokens a one-token-per-run loop would have run a step for.
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


class DecodeBuffers:
    """Per-loop buffers, allocated once at the largest length seen and sliced per step."""

    def _alloc(self, length: int) -> None:
        """(Re)allocate the buffers for sequences up to `length` tokens."""
        self.max_length = length
        self._mask = np.ones((1, length), dtype=np.int64)                   # (1, L) all visible
        self._positions = np.arange(length, dtype=np.int64)[None]           # (1, L)
        self._tokens = np.empty(length, dtype=np.int64)                     # generated ids

    def _start(self, inputs_embeds: np.ndarray, max_new_tokens: int) -> int:
        """Check a request (batch 1, max_new_tokens >= 1), grow the buffers to fit it; -> T."""
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
        B, T, _ = inputs_embeds.shape
        assert B == 1, f'batch {B}: the decode loop runs one image at a time'
        if T + max_new_tokens > self.max_length:
            self._alloc(max(2 * self.max_length, T + max_new_tokens))
        return T

    def _timed_greedy(self, prefill: Callable[[], int], step: Callable[[int, int], int],
                      max_new_tokens: int) -> DecodeOutput:
        """
        Run `prefill()` then `greedy_loop` over `step`, timing each: every `generate` ends here.

        `prefill()` returns the first token and is timed as the prefill; the loop is timed as the
        decode.
        """
        out = self._timed_speculative(prefill, _one_step(step), _no_drafts, max_new_tokens)
        out.decode_runs = None                  # one run per step: nothing to add
        return out

    def _timed_speculative(self, prefill: Callable[[], int],
                           verify: Callable[[int, list[int], int], Sequence[int]],
                           propose: Callable[[int, int], list[int]],
                           max_new_tokens: int) -> DecodeOutput:
        """
        Run `prefill()` then `speculative_loop`, timed as prefill and decode.

        `decode_runs` is recorded too.
        """
        t0 = time.perf_counter()
        token = prefill()
        t1 = time.perf_counter()
        n, steps, stopped, runs = speculative_loop(token, verify, propose, max_new_tokens,
                                                   self.stop_ids, self._tokens)
        t2 = time.perf_counter()
        return DecodeOutput(ids=self._tokens[:n].copy(), prefill_ms=_ms(t0, t1),
                            decode_ms=_ms(t1, t2), decode_steps=steps, stopped=stopped,
                            decode_runs=runs)


class GreedyDecoder(DecodeBuffers):
    """Greedy decoding with an ONNX Runtime decoder session (graph from `ros2-gmskip export`)."""

    def __init__(self, session, embed_table: np.ndarray, num_layers: int, num_kv_heads: int,
                 head_dim: int, stop_ids: tuple[int, ...], device: str = 'cpu', device_id: int = 0,
                 max_length: int = 256) -> None:
        self.session = session
        self.embed_table = embed_table                  # (vocab, C) float32, C-contiguous
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.device, self.device_id = device, device_id
        self.past_names = [f'past_key_values.{i}.{kind}' for i in range(num_layers)
                           for kind in ('key', 'value')]
        self.present_names = [f'present.{i}.{kind}' for i in range(num_layers)
                              for kind in ('key', 'value')]
        names = {i.name for i in session.get_inputs()}
        missing = [n for n in ['inputs_embeds', 'attention_mask', 'position_ids', *self.past_names]
                   if n not in names]
        if missing:
            raise BundleError(f'decoder graph lacks inputs {missing[:3]}: bundle and manifest '
                              'disagree: re-run ros2-gmskip export')
        self._empty_past = np.zeros((1, num_kv_heads, 0, head_dim), dtype=np.float32)
        self._alloc(max_length)

    def _run(self, embeds: np.ndarray, start: int, total: int, past) -> tuple[list, np.ndarray]:
        """Run positions start..total-1 -> (present OrtValues, last logits (V,))."""
        binding = self.session.io_binding()
        binding.bind_cpu_input('inputs_embeds', embeds)
        binding.bind_cpu_input('attention_mask', self._mask[:, :total])
        binding.bind_cpu_input('position_ids', self._positions[:, start:total])
        if past is None:
            for name in self.past_names:
                binding.bind_cpu_input(name, self._empty_past)
        else:
            for name, value in zip(self.past_names, past):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output('logits', 'cpu')
        for name in self.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # [logits, present.0.key, ...] in bind order
        logits = outputs[0].numpy()                     # (1, seq, vocab)
        return outputs[1:], logits[0, -1]

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                 image_positions: np.ndarray | None = None) -> DecodeOutput:
        """
        Return the greedy continuation of `inputs_embeds` (1, T, C) float32.

        `image_positions` is for token-skipping loops (token_decode.TokenSkipDecoder); unused here.
        """
        T = self._start(inputs_embeds, max_new_tokens)
        past = None

        def prefill() -> int:
            nonlocal past
            past, logits = self._run(np.ascontiguousarray(inputs_embeds, dtype=np.float32), 0, T,
                                     None)
            return int(logits.argmax())

        def step(token: int, n: int) -> int:
            nonlocal past
            embeds = self.embed_table[token:token + 1][None]            # (1, 1, C) view
            past, logits = self._run(embeds, T + n - 1, T + n, past)
            return int(logits.argmax())

        return self._timed_greedy(prefill, step, max_new_tokens)
