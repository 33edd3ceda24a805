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
Token skipping (FastV, visual KV removal) over the fused ONNX Runtime decoder segments.

    loop = FusedTokenSkipDecoder(sessions, bundle.fused_decoder, embed_table, num_kv_heads,
                                 head_dim, stop_ids, token_skip, fallback)
    out = loop.generate(inputs_embeds, max_new_tokens, image_positions)

`token_decode.TokenSkipDecoder` runs token skipping over the portable decoder.onnx segments, whose
every decode step copies each layer's KV cache through a Concat. Here the same loop (prefill
through the segments, FastV ranking and gathering between them, KV removal after the prefill, one
run per segment per step) runs over the fused graphs of a token-skipping bundle
(exporters/fused_decoder.py, "Token skipping"): the same blocks per segment, each with its own KV
buffers (1, kv, max_length, d) bound as past and present, so GroupQueryAttention appends in place.
Positions are an input (RoPE is applied before attention), so pruned rows keep their original
positions while each segment's cache length counts only the rows it holds.

What changes against the portable loop:
- FastV's ranking: the graph ending at K outputs its last block's rotated query at the last
  position (`last_query`); the head-averaged attention it pays the cached keys (the same buffer)
  is computed here in numpy: softmax(q . k / sqrt(d)) per head, GQA heads sharing their KV head.
- KV removal compacts the kept slots to the front of each buffer, in place (the buffers are numpy
  arrays the OrtValues wrap), and the segment's length shrinks: no new tensors.
- Decode steps bind nothing: one `fused_decode.StepBinding` per segment, the token's embedding and
  position written in place, each segment's output array the next one's input. With quantized
  decode steps (`export --fused-weights int4`), each segment's step graph rotates inside
  GroupQueryAttention at the given position (no RotaryEmbedding nodes).
- A request longer than the buffers runs on `fallback` (the portable loop), as in FusedDecoder.
- Decode steps can be speculative, as FusedDecoder's (runtime/draft.py): one run over the last
  token and its drafted followers at consecutive positions through every segment; each segment's
  cache length after the run is recomputed from the tokens kept, so refused rows are overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ros2_gmskip.exporters.fused_decoder import ALL_LOGITS, RANK_OUTPUT
from ros2_gmskip.runtime.decode import DecodeOutput
from ros2_gmskip.runtime.draft import DRAFT_TOKENS, NgramDraft
from ros2_gmskip.runtime.fused_decode import Drafting, output_shape, StepBinding
from ros2_gmskip.runtime.token_decode import _Segment, TokenSkipDecoder
from ros2_gmskip.tokenskip.settings import TokenSkip


@dataclass
class _FusedSegment(_Segment):
    step_session: object = None
    arrays: list = field(default_factory=list)          # numpy KV buffers, past_names order
    values: list = field(default_factory=list)          # OrtValues over the same memory
    step: StepBinding | None = None                     # the decode step's binding
    seqlens: np.ndarray | None = None                   # its seqlens_k / total_sequence_length
    total: np.ndarray | None = None


def head_averaged_attention(query: np.ndarray, keys: np.ndarray, scale: float) -> np.ndarray:
    """
    Return the softmax attention of one query over `keys`, averaged over heads -> (T,).

    query (H * d,) rotated, keys (KV, T, d) rotated, H a multiple of KV (head h reads KV head
    h // (H / KV)).
    """
    kv, _, d = keys.shape
    q = query.reshape(kv, -1, d).astype(np.float64)                   # (KV, group, d)
    scores = np.einsum('kgd,ktd->kgt', q, keys.astype(np.float64)) * scale
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs.reshape(-1, probs.shape[-1]).mean(axis=0).astype(np.float32)


class FusedTokenSkipDecoder(Drafting, TokenSkipDecoder):
    """`generate` like TokenSkipDecoder, over the fused explicit-position segments."""

    REQUIRED_INPUTS = ('position_ids', 'seqlens_k', 'total_sequence_length')

    def __init__(self, sessions: list, fused: dict, embed_table: np.ndarray, num_kv_heads: int,
                 head_dim: int, stop_ids: tuple[int, ...], token_skip: TokenSkip, fallback,
                 step_sessions: list | None = None, where: str = 'bundle',
                 draft: NgramDraft | None = None, draft_tokens: int = DRAFT_TOKENS) -> None:
        """
        Set up the per-segment fused graphs of a token-skipping bundle.

        `fused`: the manifest's fused_decoder entry (with 'segments'); `step_sessions`: the
        quantized decode-step graphs, one per segment (None: the prefill graphs); `draft`,
        `draft_tokens`: speculative decode steps, as in FusedDecoder.
        """
        import onnxruntime as ort

        self.limit = int(fused['max_length'])
        self.scale = float(fused['attention_scale'])
        self.fallback = fallback
        self._new_buffer = lambda: np.zeros((1, num_kv_heads, self.limit, head_dim), np.float32)
        self._wrap = ort.OrtValue.ortvalue_from_numpy          # shares the numpy memory (CPU)
        super().__init__(sessions, fused['segments'], embed_table, num_kv_heads, head_dim,
                         stop_ids, token_skip, max_length=self.limit, where=where)
        if step_sessions is not None:
            for seg, step, entry in zip(self.segments, step_sessions, fused['segments']):
                self._segment(step, entry)                      # the same inputs, or BundleError
                seg.step_session = step
        self._bind_steps(embed_table.shape[1])
        self._use_draft(draft, draft_tokens, self.segments[-1].step_session)
        self._verifiers = [self._bind_rows(m, embed_table.shape[1])
                           for m in range(1, draft_tokens + 2)] if self.draft else []

    def _segment(self, session, seg: dict) -> _FusedSegment:
        base = super()._segment(session, seg)
        arrays = [self._new_buffer() for _ in base.past_names]
        return _FusedSegment(**vars(base), step_session=session, arrays=arrays,
                             values=[self._wrap(a) for a in arrays])

    @property
    def cache(self) -> list:
        """Every layer's KV OrtValues in layer order (key, value), as FusedDecoder.cache."""
        return [v for seg in self.segments for v in seg.values]

    def _bind_steps(self, hidden: int) -> None:
        """
        Make one StepBinding per segment over shared arrays.

        The token's embedding and position go in once, each segment's (1, 1, C) output is the
        next one's input, the last writes the logits.
        """
        self._embeds = np.zeros((1, 1, hidden), dtype=np.float32)
        self._position = np.zeros((1, 1), dtype=np.int64)
        h = self._embeds
        for seg in self.segments:
            seg.seqlens, seg.total = np.zeros(1, dtype=np.int32), np.zeros((), dtype=np.int32)
            out = np.zeros(output_shape(seg.step_session, seg.output_name), dtype=np.float32)
            outputs = {seg.output_name: out}
            if any(o.name == RANK_OUTPUT for o in seg.step_session.get_outputs()):
                outputs[RANK_OUTPUT] = np.zeros(output_shape(seg.step_session, RANK_OUTPUT),
                                                dtype=np.float32)      # computed, not read
            seg.step = StepBinding(
                seg.step_session, {seg.input_name: h, 'position_ids': self._position,
                                   'seqlens_k': seg.seqlens, 'total_sequence_length': seg.total},
                outputs, list(zip(seg.past_names, seg.present_names, seg.values)))
            h = out
        self._logits = h

    def _bind_rows(self, rows: int, hidden: int) -> tuple[list, np.ndarray, np.ndarray,
                                                          np.ndarray]:
        """
        Bind as `_bind_steps` does, for a speculative run over `rows` new rows.

        -> (one StepBinding per segment, the embeddings (1, rows, C), positions (1, rows),
        all_logits (1, rows, V)), all in place.
        """
        embeds = np.zeros((1, rows, hidden), dtype=np.float32)
        positions = np.zeros((1, rows), dtype=np.int64)
        every = np.zeros((1, rows, self.embed_table.shape[0]), dtype=np.float32)
        h, bindings = embeds, []
        for seg in self.segments:
            graph = seg.step_session
            if seg is self.segments[-1]:
                out = None
                outputs = {'logits': np.zeros(output_shape(graph, 'logits'), np.float32),
                           ALL_LOGITS: every}
            else:
                out = np.zeros((1, rows, hidden), dtype=np.float32)
                outputs = {seg.output_name: out}
            if any(o.name == RANK_OUTPUT for o in graph.get_outputs()):
                outputs[RANK_OUTPUT] = np.zeros(output_shape(graph, RANK_OUTPUT), np.float32)
            bindings.append(StepBinding(
                graph, {seg.input_name: h, 'position_ids': positions, 'seqlens_k': seg.seqlens,
                        'total_sequence_length': seg.total}, outputs,
                list(zip(seg.past_names, seg.present_names, seg.values))))
            h = out
        return bindings, embeds, positions, every

    def _verify(self, token: int, drafts: list[int], position: int, cached: list[int]
                ) -> np.ndarray:
        """
        Run `token` (at `position`) + `drafts` once through every segment, speculatively.

        Each segment holds `cached` rows -> the greedy choice after each row.
        """
        bindings, embeds, positions, every = self._verifiers[len(drafts)]
        rows = len(drafts) + 1
        embeds[0, 0] = self.embed_table[token]
        if drafts:
            embeds[0, 1:] = self.embed_table[drafts]
        positions[0] = self._positions[0, position:position + rows]
        for seg, binding, length in zip(self.segments, bindings, cached):
            seg.seqlens[0] = length + rows - 1
            seg.total[()] = length + rows
            binding.run()
        return every[0].argmax(axis=-1)

    def _step(self, token: int, position: int, lengths: list[int], pasts: list) -> int:
        """TokenSkipDecoder._step over the prepared bindings: nothing is bound per step."""
        self._embeds[0, 0] = self.embed_table[token]
        self._position[0, 0] = position
        for s, seg in enumerate(self.segments):
            seg.seqlens[0] = lengths[s]                         # rows cached before this one
            lengths[s] += 1
            seg.total[()] = lengths[s]
            seg.step.run()
        return int(self._logits[0, 0].argmax())

    def _run(self, seg: _FusedSegment, h: np.ndarray, positions: np.ndarray, total: int,
             past=None):
        """
        Run one segment's prefill (fp32 or int8) graph over its buffers.

        -> (main output, attention (1, total) or None, its buffers). `past` is unused: the
        buffers are the cache, and decode steps go through `_step`'s prepared bindings instead.
        """
        binding = seg.session.io_binding()
        binding.bind_cpu_input(seg.input_name, h)
        binding.bind_cpu_input('position_ids', positions)
        binding.bind_cpu_input('seqlens_k', np.array([total - 1], dtype=np.int32))
        binding.bind_cpu_input('total_sequence_length', np.array(total, dtype=np.int32))
        for past_name, present_name, value in zip(seg.past_names, seg.present_names, seg.values):
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)
        binding.bind_output(seg.output_name, 'cpu')
        if seg.ranks:
            binding.bind_output(RANK_OUTPUT, 'cpu')
        seg.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()[len(seg.values):]     # bind order: buffers first
        attention = None
        if seg.ranks:
            keys = seg.arrays[-2][0, :, :total]                 # the last block's keys (KV, T, d)
            attention = head_averaged_attention(outputs[1].numpy()[0, -1], keys, self.scale)[None]
        return outputs[0].numpy(), attention, seg.values

    def _drop_slots(self, s: int, past: list, keep: np.ndarray) -> list:
        """Compact the kept slots to the front of segment `s`'s buffers, in place."""
        for array in self.segments[s].arrays:
            array[:, :, :len(keep)] = array[:, :, keep]        # the gather copies first
        return past

    def logits_after(self, embeds: np.ndarray, past_length: int) -> np.ndarray:
        """
        Run every segment's prefill (fp32) graph, unpruned, for `embeds` (1, T, C).

        After `past_length` cached positions -> the last position's logits (V,) (export
        validation compares it with torch).
        """
        total = past_length + embeds.shape[1]
        positions = self._positions[:, past_length:total]
        h = np.ascontiguousarray(embeds, dtype=np.float32)
        for seg in self.segments:
            h, _, _ = self._run(seg, h, positions, total)
        return h[0, -1]

    def generate(self, inputs_embeds: np.ndarray, max_new_tokens: int,
                 image_positions: np.ndarray | None = None) -> DecodeOutput:
        """TokenSkipDecoder.generate, or `fallback`'s for requests longer than the buffers."""
        if inputs_embeds.shape[1] + max_new_tokens > self.limit:
            return self.fallback.generate(inputs_embeds, max_new_tokens, image_positions)
        if self.draft is None:
            return super().generate(inputs_embeds, max_new_tokens, image_positions)
        T = self._start(inputs_embeds, max_new_tokens)
        lengths: list[int] = []                 # each segment's cache after the prefill

        def prefill() -> int:
            return self._begin(inputs_embeds, image_positions, lengths, [])

        def verify(token: int, drafts: list[int], n: int) -> np.ndarray:
            # n - 1 kept tokens since the prefill sit in every segment's cache
            return self._verify(token, drafts, T + n - 1, [c + n - 1 for c in lengths])

        return self._timed_speculative(prefill, verify, self._propose, max_new_tokens)
