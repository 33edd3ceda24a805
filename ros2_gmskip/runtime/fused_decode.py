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
Greedy decoding over the fused ONNX Runtime decoder (decoder.fused.onnx), KV cache in place.

The graph (exporters/fused_decoder.py) takes each layer's KV buffer (1, kv, max_length, d) as
`past_key_values.{i}.*` and returns it as `present.{i}.*`; binding the same OrtValue to both makes
GroupQueryAttention append the new rows in place, so a decode step moves no cache at all. The
buffers are allocated once per backend; rows past the current length are stale and never read
(the kernel attends to `seqlens_k + 1` positions only).

    prefill   inputs_embeds (1, T, C), seqlens_k [T-1], total_sequence_length T
    step n    inputs_embeds (1, 1, C), seqlens_k [T+n-1], total_sequence_length T+n

Decode steps reuse one IOBinding (`StepBinding`): their inputs and outputs are small numpy arrays
overwritten in place, so a step binds nothing from Python.

With `step_session` (the weight-quantized copy of the graph, `export --fused-weights int4`), the
prefill runs on `session` (which the backend makes from the bundle's int8 prefill copy, when it
has one) and every decode step on `step_session`: the same buffers, so nothing changes hands
between them.

With a draft table (`draft`, runtime/draft.py) and a graph that outputs `all_logits`, decoding is
speculative: one run over the last kept token plus up to `draft_tokens` guessed ones (a binding
per row count, made once), keeping every guess the model's greedy choice confirms
(decode.speculative_loop): greedy's ids in fewer runs.

A request longer than the buffers (prompt + max_new_tokens > max_length) is decoded by `fallback`
(the portable decoder.onnx loop), so no request fails for being long.
"""

from __future__ import annotations

import numpy as np
from ros2_gmskip.errors import BundleError
from ros2_gmskip.exporters.fused_decoder import ALL_LOGITS
from ros2_gmskip.runtime.decode import DecodeBuffers, DecodeOutput
from ros2_gmskip.runtime.draft import DRAFT_TOKENS, NgramDraft


class StepBinding:
    """
    A decode step's IOBinding, made once.

    Every input and output is an OrtValue over a numpy array the loop overwrites in place (CPU
    OrtValues made from numpy share its memory), so a step binds nothing. Binding ~20 KV buffers
    from Python every step cost a sixth of a step on the 2-core CPU (pruned default model;
    bench/decode_step.py: 0.83-0.87 of the time with it).
    """

    def __init__(self, session, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                 cache: list[tuple[str, str, object]]) -> None:
        """`cache`: (past name, present name, OrtValue) triples, bound as both."""
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        self._values = []                          # the OrtValues must outlive the binding
        for names, bind in ((inputs, self.binding.bind_ortvalue_input),
                            (outputs, self.binding.bind_ortvalue_output)):
            for name, array in names.items():
                value = ort.OrtValue.ortvalue_from_numpy(array)
                bind(name, value)
                self._values.append(value)
        for past, present, value in cache:
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)


def output_shape(session, name: str) -> tuple[int, ...]:
    """Return the fixed shape a graph declares for output `name` at one position (seq axis = 1)."""
    shape = next(o.shape for o in session.get_outputs() if o.name == name)
    return tuple(d if isinstance(d, int) else 1 for d in shape)


class Drafting:
    """
    Return the draft table both fused loops use for speculative decoding (runtime/draft.py).

    Only if the last graph can check guesses (outputs all_logits) and any are asked for.
    """

    draft: NgramDraft | None = None
    draft_tokens: int = 0

    def _use_draft(self, draft: NgramDraft | None, draft_tokens: int, last_graph) -> None:
        self.draft_tokens = draft_tokens
        self.draft = draft if draft_tokens > 0 and any(
            o.name == ALL_LOGITS for o in last_graph.get_outputs()) else None

    @property
    def speculative(self) -> bool:
        """Whether `generate` decodes with drafts."""
        return self.draft is not None

    def _propose(self, n: int, limit: int) -> list[int]:
        """Guesses for after the n ids kept so far (self._tokens), at most `limit`."""
        return self.draft.propose(self._tokens[:n], min(self.draft_tokens, limit), self.stop_ids)


class FusedDecoder(Drafting, DecodeBuffers):
    """`generate` like decode.GreedyDecoder, over the fused graph's session."""

    def __init__(self, session, embed_table: np.ndarray, num_layers: int, num_kv_heads: int,
                 head_dim: int, max_length: int, stop_ids: tuple[int, ...], fallback,
                 step_session=None, draft: NgramDraft | None = None,
                 draft_tokens: int = DRAFT_TOKENS) -> None:
        """
        Prepare the fused decode loop; with `draft` (`draft_tokens` >= 1) decode speculatively.

        Speculative decoding makes up to `draft_tokens` guesses per run (runtime/draft.py), where
        the step graph outputs `all_logits`.
        """
        import onnxruntime as ort

        self.session = session
        self.step_session = step_session or session
        self.embed_table = embed_table
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.fallback = fallback
        self.limit = int(max_length)
        self.pairs = [(f'past_key_values.{i}.{kind}', f'present.{i}.{kind}')
                      for i in range(num_layers) for kind in ('key', 'value')]
        for graph in {self.session, self.step_session}:
            names = {i.name for i in graph.get_inputs()}
            missing = [n for n in ['inputs_embeds', 'seqlens_k', 'total_sequence_length',
                                   *(p for p, _ in self.pairs)] if n not in names]
            if missing:
                raise BundleError(f'fused decoder graph lacks inputs {missing[:3]}: bundle and '
                                  'manifest disagree: re-run ros2-gmskip export')
        shape = (1, num_kv_heads, self.limit, head_dim)
        self.cache = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, 'cpu', 0)
                      for _ in self.pairs]
        self._kv = [(past, present, value)                    # bound as both, in every binding
                    for (past, present), value in zip(self.pairs, self.cache)]
        self._alloc(self.limit)
        self._embeds = np.zeros((1, 1, embed_table.shape[1]), dtype=np.float32)
        self._seqlens = np.zeros(1, dtype=np.int32)
        self._total = np.zeros((), dtype=np.int32)
        self._logits = np.zeros(output_shape(self.step_session, 'logits'), dtype=np.float32)
        self._step = StepBinding(
            self.step_session, {'inputs_embeds': self._embeds, 'seqlens_k': self._seqlens,
                                'total_sequence_length': self._total}, {'logits': self._logits},
            self._kv)
        self._use_draft(draft, draft_tokens, self.step_session)
        self._verifiers = [self._verifier(m) for m in range(1, draft_tokens + 2)] \
            if self.draft else []

    def _verifier(self, rows: int) -> tuple[StepBinding, np.ndarray, np.ndarray]:
        """
        Return a decode run over `rows` new rows (the last kept token + rows-1 drafts), bound once.

        -> (binding, its inputs_embeds (1, rows, C), its all_logits (1, rows, V)).
        """
        embeds = np.zeros((1, rows, self.embed_table.shape[1]), dtype=np.float32)
        every = np.zeros((1, rows, self._logits.shape[-1]), dtype=np.float32)
        binding = StepBinding(
            self.step_session, {'inputs_embeds': embeds, 'seqlens_k': self._seqlens,
                                'total_sequence_length': self._total},
            {'logits': np.zeros_like(self._logits), ALL_LOGITS: every},
            self._kv)
        return binding, embeds, every

    def _run(self, embeds: np.ndarray, past_length: int, session=None) -> np.ndarray:
        """
        Run `session` (default: the prefill graph) once for `embeds` (1, T, C).

        After `past_length` cached positions -> the last position's logits (V,); the new K/V
        rows land in `self.cache`.
        """
        session = session or self.session
        total = past_length + embeds.shape[1]
        binding = session.io_binding()
        binding.bind_cpu_input('inputs_embeds', embeds)
        binding.bind_cpu_input('seqlens_k', np.array([total - 1], dtype=np.int32))
        binding.bind_cpu_input('total_sequence_length', np.array(total, dtype=np.int32))
        for past, present, value in self._kv:
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output('logits', 'cpu')
        session.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()[0, -1]      # outputs in bind order: logits last

    def logits_after(self, embeds: np.ndarray, past_length: int) -> np.ndarray:
        """
        Run the prefill graph for `embeds` (1, T, C) after `past_length` cached positions.

        -> the last position's logits (V,) (export validation compares it with torch).
        """
        return self._run(np.ascontiguousarray(embeds, dtype=np.float32), past_length)

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                 image_positions: np.ndarray | None = None) -> DecodeOutput:
        """Greedy continuation of `inputs_embeds` (1, T, C) float32."""
        if inputs_embeds.shape[1] + max_new_tokens > self.limit:
            return self.fallback.generate(inputs_embeds, max_new_tokens, image_positions)
        T = self._start(inputs_embeds, max_new_tokens)

        def prefill() -> int:
            embeds = np.ascontiguousarray(inputs_embeds, dtype=np.float32)
            return int(self._run(embeds, 0).argmax())

        if self.draft is not None:
            return self._timed_speculative(prefill, lambda token, drafts, n: self._verify(
                token, drafts, T + n - 1), self._propose, max_new_tokens)

        def step(token: int, n: int) -> int:
            self._embeds[0, 0] = self.embed_table[token]
            self._seqlens[0] = T + n - 1                     # the cache holds T + n - 1 rows
            self._total[()] = T + n
            self._step.run()
            return int(self._logits[0, 0].argmax())

        return self._timed_greedy(prefill, step, max_new_tokens)

    def _verify(self, token: int, drafts: list[int], cached: int) -> np.ndarray:
        """One run over `token` + `drafts` after `cached` rows -> the greedy choice after each."""
        binding, embeds, every = self._verifiers[len(drafts)]
        embeds[0, 0] = self.embed_table[token]
        if drafts:
            embeds[0, 1:] = self.embed_table[drafts]
        rows = len(drafts) + 1
        self._seqlens[0] = cached + rows - 1
        self._total[()] = cached + rows
        binding.run()
        return every[0].argmax(axis=-1)
