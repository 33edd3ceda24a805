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
Run a decoder segment in ONNX Runtime: its portable graph, or its fused graph (KV in place).

Two runners (runtime/runner.py's protocol) over the two kinds of graph a bundle holds per segment:

PortableRunner: decoder.onnx (decoder.1.onnx, ...), plain ONNX ops, what TensorRT builds from.
    Every run feeds the cache back as `past_key_values.*` and gets it grown by the new rows as
    `present.*` (a Concat per layer: the whole cache is copied each step). The outputs are bound
    with IOBinding and bound back as the next run's inputs, so the cache never leaves ONNX
    Runtime (on CUDA it stays on the GPU); the attention mask (all ones: batch 1) is one buffer
    sliced per run.

FusedRunner: decoder.fused.onnx (...), ONNX Runtime's contrib ops (exporters/fused_decoder.py).
    Each layer's KV buffer (1, kv, max_length, d) is bound as both `past` and `present`, so
    GroupQueryAttention appends the new rows in place and a decode step moves no cache; rows past
    the current length are stale and never read (the kernel attends to `seqlens_k + 1` rows).
    The buffers are numpy arrays the OrtValues wrap, so compacting them is a numpy gather.
    Prefill runs on the prefill graph (the int8 copy where the bundle has one), every later run
    on the step graph (the int4 / int8 copy where it has one) over the same buffers. A run binds
    nothing from Python: one `StepBinding` per row count, made on first use, whose inputs and
    outputs are arrays the runner overwrites in place (binding ~20 KV buffers per step cost a
    sixth of a step on the 2-core CPU: bench/decode_step.py).
"""

from __future__ import annotations

import numpy as np
from ros2_gmskip.bundle_format import (ALL_LOGITS, ATTENTION_MASK, LAST_QUERY,
                                       LAST_TOKEN_ATTENTION, LOGITS, POSITION_IDS, Segment,
                                       SEQLENS_K, TOTAL_SEQUENCE_LENGTH)
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.runner import Prefilled
from ros2_gmskip.runtime.token_skip import head_averaged_attention


def _inputs(session) -> set[str]:
    return {i.name for i in session.get_inputs()}


def _check_inputs(session, names: list[str], what: str) -> None:
    missing = [n for n in names if n not in _inputs(session)]
    if missing:
        raise BundleError(f'{what} lacks inputs {missing[:3]}: bundle and manifest disagree: '
                          're-run ros2-gmskip export')


def output_shape(session, name: str) -> tuple[int, ...]:
    """Return the shape a graph declares for output `name`, dynamic axes as 1."""
    shape = next(o.shape for o in session.get_outputs() if o.name == name)
    return tuple(d if isinstance(d, int) else 1 for d in shape)


class PortableRunner:
    """A segment's plain-op graph: explicit KV tensors in and out, any execution provider."""

    explicit_positions = True
    max_length = None

    def __init__(self, session, segment: Segment, num_kv_heads: int, head_dim: int,
                 device: str = 'cpu', device_id: int = 0) -> None:
        """Check the graph's inputs against the segment; BundleError if they differ."""
        self.session, self.segment = session, segment
        self.device, self.device_id = device, device_id
        self.past_names, self.present_names = segment.past_names(), segment.present_names()
        _check_inputs(session, [segment.input_name, ATTENTION_MASK, POSITION_IDS,
                                *self.past_names], f'decoder graph {segment.portable}')
        # drafts need the cache cut back to the kept rows: a numpy slice, so on the CPU only
        self.max_rows = None if device == 'cpu' else 1
        self._empty = np.zeros((1, num_kv_heads, 0, head_dim), dtype=np.float32)
        self._mask = np.ones((1, 256), dtype=np.int64)                   # (1, L) all visible
        self.past: list = []                  # OrtValues (or numpy arrays after a compact)
        self.length = 0

    def _run(self, rows: np.ndarray, positions: np.ndarray, past: list | None,
             total: int) -> list:
        """Bind and run once -> [main output, (last_token_attention), present.*] OrtValues."""
        if total > self._mask.shape[1]:
            self._mask = np.ones((1, 2 * total), dtype=np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.segment.input_name, rows)
        binding.bind_cpu_input(ATTENTION_MASK, self._mask[:, :total])
        binding.bind_cpu_input(POSITION_IDS, positions[None])
        for i, name in enumerate(self.past_names):
            value = self._empty if past is None else past[i]
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.segment.output_name, 'cpu')
        if self.segment.ranks:
            binding.bind_output(LAST_TOKEN_ATTENTION, 'cpu')
        for name in self.present_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()                      # in bind order

    def prefill(self, rows: np.ndarray, positions: np.ndarray) -> Prefilled:
        """Start a request: the cache becomes `rows` (1, T, C); see runner.SegmentRunner."""
        outputs = self._run(rows, positions, None, rows.shape[1])
        k = 2 if self.segment.ranks else 1
        self.past, self.length = outputs[k:], rows.shape[1]
        out = outputs[0].numpy()
        return Prefilled(out[:, -1:] if self.segment.last else out,
                         outputs[1].numpy()[0] if self.segment.ranks else None)

    def run(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> np.ndarray:
        """Append `rows` (1, n, C) after `cached` cache rows; return their outputs."""
        past = self.past
        if cached != self.length:                     # refused drafts: drop their rows
            past = [np.ascontiguousarray(_numpy(p)[:, :, :cached]) for p in past]
        outputs = self._run(rows, positions, past, cached + rows.shape[1])
        k = 2 if self.segment.ranks else 1
        self.past, self.length = outputs[k:], cached + rows.shape[1]
        return outputs[0].numpy()

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the cache rows `keep` (a numpy gather; the next run binds the arrays)."""
        self.past = [np.ascontiguousarray(_numpy(p)[:, :, keep]) for p in self.past]
        self.length = len(keep)


def _numpy(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


class StepBinding:
    """An IOBinding made once, over arrays its user overwrites in place before each run."""

    def __init__(self, session, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                 cache: list[tuple[str, str, object]]) -> None:
        """Bind the arrays (CPU OrtValues share their memory); `cache`: (past, present, value)."""
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
        """Run the session on what the arrays hold now."""
        self.session.run_with_iobinding(self.binding)


class _Step:
    """A run over a fixed number of new rows: its binding and the arrays it reads and writes."""

    def __init__(self, binding: StepBinding, rows: np.ndarray, positions: np.ndarray | None,
                 out: np.ndarray) -> None:
        self.binding, self.rows, self.positions, self.out = binding, rows, positions, out


class FusedRunner:
    """A segment's fused ONNX Runtime graph(s), KV cache in place (the module docstring)."""

    def __init__(self, segment: Segment, prefill_session, step_session, positions: str,
                 max_length: int, num_kv_heads: int, head_dim: int,
                 attention_scale: float) -> None:
        """`positions`: 'explicit' (RoPE at position_ids) or 'cache' (at the cache length)."""
        import onnxruntime as ort

        self.segment, self.max_length = segment, int(max_length)
        self.prefill_session, self.step_session = prefill_session, step_session
        self.explicit_positions = positions == 'explicit'
        self.scale = float(attention_scale)
        self.past_names, self.present_names = segment.past_names(), segment.present_names()
        need = [segment.input_name, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, *self.past_names]
        for session in {prefill_session, step_session}:
            _check_inputs(session, need + ([POSITION_IDS] if self.explicit_positions else []),
                          f'fused decoder graph of {segment.name}')
        step_outputs = {o.name for o in step_session.get_outputs()}
        self.max_rows = None if not segment.last or ALL_LOGITS in step_outputs else 1
        shape = (1, num_kv_heads, self.max_length, head_dim)
        self.arrays = [np.zeros(shape, dtype=np.float32) for _ in self.past_names]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]   # same memory
        self._cache = list(zip(self.past_names, self.present_names, values))
        self._seqlens = np.zeros(1, dtype=np.int32)          # cached + new rows - 1
        self._total = np.zeros((), dtype=np.int32)            # cached + new rows
        self._steps: dict[int, _Step] = {}

    def prefill(self, rows: np.ndarray, positions: np.ndarray) -> Prefilled:
        """Start a request: the cache becomes `rows` (1, T, C); see runner.SegmentRunner."""
        T = rows.shape[1]
        session = self.prefill_session
        binding = session.io_binding()
        binding.bind_cpu_input(self.segment.input_name, rows)
        if POSITION_IDS in _inputs(session):
            binding.bind_cpu_input(POSITION_IDS, positions[None])
        binding.bind_cpu_input(SEQLENS_K, np.array([T - 1], dtype=np.int32))
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.array(T, dtype=np.int32))
        for past, present, value in self._cache:
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_output(self.segment.output_name, 'cpu')
        if self.segment.ranks:
            binding.bind_output(LAST_QUERY, 'cpu')
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()[len(self._cache):]     # bind order: buffers first
        attention = None
        if self.segment.ranks:                  # the last block's keys: (KV, T, d)
            attention = head_averaged_attention(outputs[1].numpy()[0, -1],
                                                self.arrays[-2][0, :, :T], self.scale)
        return Prefilled(outputs[0].numpy(), attention)

    def run(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> np.ndarray:
        """Append `rows` (1, n, C) after `cached` cache rows; return their outputs."""
        n = rows.shape[1]
        step = self._steps.get(n) or self._bind(n)
        np.copyto(step.rows, rows)
        if step.positions is not None:
            step.positions[0] = positions
        self._seqlens[0] = cached + n - 1
        self._total[()] = cached + n
        step.binding.run()
        return step.out

    def _bind(self, n: int) -> _Step:
        """Make the step binding for runs of `n` new rows (once)."""
        session, seg = self.step_session, self.segment
        rows = np.zeros((1, n, _width(session, seg)), dtype=np.float32)
        positions = (np.zeros((1, n), dtype=np.int64) if POSITION_IDS in _inputs(session)
                     else None)
        inputs = {seg.input_name: rows, SEQLENS_K: self._seqlens,
                  TOTAL_SEQUENCE_LENGTH: self._total}
        if positions is not None:
            inputs[POSITION_IDS] = positions
        if seg.last:
            logits = np.zeros(output_shape(session, LOGITS), dtype=np.float32)   # (1, 1, V)
            outputs = {LOGITS: logits}
            out = logits
            if n > 1:                           # drafts: every row's logits
                out = np.zeros((1, n, logits.shape[-1]), dtype=np.float32)
                outputs[ALL_LOGITS] = out
        else:
            out = np.zeros((1, n, rows.shape[-1]), dtype=np.float32)
            outputs = {seg.output_name: out}
        if any(o.name == LAST_QUERY for o in session.get_outputs()):
            outputs[LAST_QUERY] = np.zeros(output_shape(session, LAST_QUERY), np.float32)
        step = _Step(StepBinding(session, inputs, outputs, self._cache), rows, positions, out)
        self._steps[n] = step
        return step

    def compact(self, keep: np.ndarray) -> None:
        """Move the kept cache rows to the front of every buffer, in place."""
        for array in self.arrays:
            array[:, :, :len(keep)] = array[:, :, keep]        # the gather copies first


def _width(session, segment: Segment) -> int:
    """Return the hidden size a graph's main input declares."""
    shape = next(i.shape for i in session.get_inputs() if i.name == segment.input_name)
    return int(shape[-1])
