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
A second, ONNX Runtime-only decoder graph, built straight from the weights with ORT's fused ops.

    nodes, ops = build_fused_graph(model, Path('bundle/decoder.fused.onnx'), 256, segment)
    reason = fused_unsupported(model)       # None, or why this model gets no fused graph

Why a second graph
------------------
decoder.onnx is written for TensorRT: plain ONNX ops only, so every engine build can parse it.
ONNX Runtime on a CPU (or its CUDA EP) runs that graph node by node; after its own optimisations a
block is still ~32 nodes, and every decode step copies each layer's whole KV cache through a
Concat. This graph is what onnxruntime-genai builds for LLMs, for the same reason:

    RMSNormalization (opset 23)                      first block's input norm
    per block: MatMul q|k|v -> com.microsoft.GroupQueryAttention (RoPE inside, causal, KV cache
               in a preallocated buffer that is past and present at once) -> MatMul o ->
               SkipSimplifiedLayerNormalization (residual add + norm) -> MatMul gate|up -> Split
               -> QuickGelu(alpha=1) = SiLU -> Mul -> MatMul down ->
               SkipSimplifiedLayerNormalization (residual add + next norm)
    MatMul lm_head (every row: all_logits) -> last position (logits)

10 nodes per block instead of ~32, and no KV copies: the runtime (ort_runners.FusedRunner) binds
one buffer per layer and kind, (1, kv_heads, max_length, head_dim), as both `past` and `present`,
so GroupQueryAttention appends the new rows in place. Measured on the 2-core CPU (10-block pruned
default model, 1 thread, `ros2-gmskip bench --rounds 3`: ort_pruned vs ort_pruned_portable):
decode 32.5 -> 19.6 ms per frame (~16 tokens), frame 48.4 -> 35.6 ms, identical text
(bench/results/bench.json; the step binding of runtime/ort_runners.py included). What a decode
step still costs is the weights themselves: 41 matrix-vector products stream ~18 MB of fp32
weights per token (~60 % of the step in ONNX Runtime's profile).

Contrib ops are not in TensorRT's ONNX parser, so this graph never replaces decoder.onnx: engines
are built from decoder.onnx, and the runtime falls back to it for token skipping asked at run time
of a bundle exported without it, for GPU execution providers (the graph is fp32 and made for the
CPU kernels; the GPU GroupQueryAttention kernels are made for fp16 / bf16, and no GPU was at hand
to test them), and for requests longer than `max_length`.

Inputs:  inputs_embeds (1, T, C) float32, seqlens_k (1,) int32 = past + T - 1,
         total_sequence_length () int32 = past + T, past_key_values.{i}.key/value (1, kv, M, d)
Outputs: logits (1, 1, V) of the last position, all_logits (1, T, V) of every new row (a
         speculative decode run reads one per drafted token, runtime/draft.py; a 42-token lm_head
         over 70 rows is ~1 MFLOP), present.{i}.key/value (the same buffers).
Batch 1 only: that is how the runtime decodes (one camera frame per request). The block's
weights and constants come from the same helpers the portable graphs' block uses
(vlm/llama_block.py: `qkv_weight`, `gate_up_weight`, `rms_eps`, `rope_inv_freq`).

Token skipping (a bundle exported with FastV / visual KV removal)
------------------------------------------------------------------
GroupQueryAttention's own RoPE takes each new row's position from the cache length. FastV keeps
the original positions of the rows it keeps, and KV removal shortens the cache under them, so in
a token-skipping bundle both would be wrong. Such a bundle gets one fused graph per decoder.onnx
segment (rotation 'explicit': decoder.fused.onnx, decoder.fused.1.onnx, ...: the same blocks,
input and output names) with explicit positions: an input `position_ids` (1, seq) int64, q|k|v
split and rotated by ONNX RotaryEmbedding (opset 23), then GroupQueryAttention with do_rotary=0
(3 more nodes per block). Each segment keeps its own cache length in `seqlens_k`. The segment
that ends at FastV's K also outputs `last_query`, the rotated query of its last block at the last
position, so the runtime can rank the image tokens from it and the cached keys
(runtime/token_skip.py). Why segments rather than pruning inside one graph: as for
decoder.onnx (exporters/onnx_export.py). A decode step adds one row at a known position, which
GroupQueryAttention's own RoPE handles when given `position_ids` (it cannot rotate a pruned
prompt: it assumes consecutive positions), so the quantized decode-step graphs of such a bundle
are built that way (rotation 'step'), 10 nodes per block again; the fp32 bundle keeps one graph per
segment for prefill and steps, so as not to hold the weights twice.

Quantized graphs (`export --fused-weights int4|int8`)
----------------------------------------------------
Since a decode step is weight streaming, fewer weight bytes are the remaining lever on a CPU.
`quantize_step_graph` rewrites every MatMul of the fused graph as com.microsoft.MatMulNBits
(ONNX Runtime's weight-only quantizer: symmetric, blocks of 32 along the input axis, int8
activations inside the kernel: accuracy_level 4) into the decode-step graph. The prefill is a
70-row GEMM, compute-bound: MatMulNBits made it slower on this AVX2 core (no VNNI), so it gets its
own copy instead (`quantize_prefill_graph`): ONNX Runtime's dynamic int8 quantization (int8
weights per tensor, activations quantized per run, MatMulInteger), which measured 10.6 -> 7.5 ms
for the pruned default model's prefill on one core. Both copies share the fp32 graph's inputs,
outputs and KV buffers; the fp32 graph stays in the bundle (export validation compares it with
PyTorch). Quantized weights change numbers: validation compares the greedy text with `generate`
and refuses the bundle when more than 1 in 5 test scenes differ (`MIN_QUANTIZED_AGREEMENT`); the
agreement is recorded in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ros2_gmskip.bundle_format import (ALL_LOGITS, LAST_QUERY, LOGITS, past_name, POSITION_IDS,
                                       present_name, Segment, SEQLENS_K, TOTAL_SEQUENCE_LENGTH,
                                       WEIGHTS)
from ros2_gmskip.exporters.export_config import attention_windows, SUPPORTED_ROPE_TYPES

QUANT_BLOCK_SIZE = 32
QUANT_ACCURACY_LEVEL = 4                   # MatMulNBits computes with int8 activations
MIN_QUANTIZED_AGREEMENT = 0.8              # greedy texts identical to generate, share of scenes
OPSET = 23                         # RMSNormalization; the contrib ops live in com.microsoft v1
NORMS = ('LlamaRMSNorm', 'MistralRMSNorm', 'Qwen2RMSNorm')
# How a graph rotates q and k: at the cache length (a plain bundle), at `position_ids` with ONNX
# RotaryEmbedding (token skipping: pruned rows keep their positions), or at `position_ids` inside
# GroupQueryAttention (a token-skipping segment's decode steps: one new row at a known position).
ROTATIONS = ('cache', 'explicit', 'step')


def _text(model):
    return model.model.language_model


def fused_unsupported(model) -> str | None:
    """Return why `model`'s decoder cannot be written as the fused graph, or None if it can."""
    from ros2_gmskip.vlm.llama_block import gate_up_weight, unsupported_block

    text = _text(model)
    cfg = text.config
    if any(attention_windows(cfg, len(text.layers))):
        return 'sliding-window attention'
    H = cfg.num_attention_heads
    head_dim = getattr(cfg, 'head_dim', None) or cfg.hidden_size // H
    if head_dim % 16:
        return f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention's CPU RoPE)"
    rotary = text.rotary_emb
    if getattr(rotary, 'rope_type', 'default') not in SUPPORTED_ROPE_TYPES:
        return f'rope_type {rotary.rope_type!r} changes with the sequence length'
    for i, block in enumerate(text.layers):
        attn, mlp = block.self_attn, block.mlp
        reason = unsupported_block(block)
        if reason:
            return f'block {i} has {reason}'
        norms = {type(block.input_layernorm).__name__,
                 type(block.post_attention_layernorm).__name__}
        if not norms <= set(NORMS):
            return f'block {i} norms {sorted(norms)} are not a Llama-style RMSNorm'
        if gate_up_weight(mlp) is None:
            return f'block {i} MLP is not gated (gate/up/down)'
        act = getattr(getattr(mlp, 'config', cfg), 'hidden_act', None)
        if act not in ('silu', 'swish'):
            return f'block {i} MLP activation {act!r} is not SiLU'
        if any(getattr(m, 'bias', None) is not None for m in
               (attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
            return f'block {i} has o_proj / MLP biases'
    if type(text.norm).__name__ not in NORMS or getattr(model.lm_head, 'bias', None) is not None:
        return 'final norm / lm_head are not Llama-style'
    return None


class _Graph:
    """Nodes and initialisers being collected (names are unique by construction)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []

    def weight(self, name: str, value, dtype=np.float32) -> str:
        from onnx import numpy_helper
        array = value.detach().float().cpu().numpy() if hasattr(value, 'detach') else value
        self.initializers.append(numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = '',
             **attrs) -> list[str]:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, outputs, domain=domain or None, **attrs))
        return outputs


def build_fused_graph(model, path: Path, max_length: int, segment: Segment,
                      rotation: str = 'cache') -> tuple[int, list[str]]:
    """
    Write the fused graph of `segment`'s blocks of `model` (already pruned); return (nodes, ops).

    `max_length`: the KV buffers' and RoPE tables' length (prompt + generated tokens); the
    runtime decodes longer requests with the portable graphs. `rotation` (ROTATIONS): 'cache'
    for a plain bundle's one segment; 'explicit' for a token-skipping segment (see "Token
    skipping" above; the ranking segment also outputs `last_query`); 'step' for a
    token-skipping segment's decode-step graph (10 nodes per block, as 'cache').
    Raises ValueError if `fused_unsupported(model)` names a reason.
    """
    import onnx
    from onnx import helper, TensorProto
    from ros2_gmskip.vlm.llama_block import gate_up_weight, qkv_weight, rms_eps, rope_inv_freq
    import torch

    reason = fused_unsupported(model)
    if reason:
        raise ValueError(f'no fused decoder for this model: {reason}')
    if rotation not in ROTATIONS:
        raise ValueError(f'rotation must be one of {", ".join(ROTATIONS)}, got {rotation!r}')
    text = _text(model)
    cfg = text.config
    H = cfg.num_attention_heads
    KV = cfg.num_key_value_heads or H
    d = getattr(cfg, 'head_dim', None) or cfg.hidden_size // H
    C, V = cfg.hidden_size, model.lm_head.out_features
    first, stop, last = segment.first, segment.stop, segment.last
    explicit = rotation == 'explicit'
    ranks = explicit and segment.ranks
    g = _Graph()

    # RoPE tables (max_length, d/2) from the model's own inverse frequencies and scaling.
    inv_freq, scale = rope_inv_freq(text.rotary_emb)
    angles = np.arange(max_length, dtype=np.float64)[:, None] * \
        inv_freq.double().cpu().numpy()[None]
    g.weight('cos_cache', np.cos(angles) * scale)
    g.weight('sin_cache', np.sin(angles) * scale)

    input_name = segment.input_name
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 'seq', C])]
    if rotation != 'cache':
        inputs.append(helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64,
                                                    [1, 'seq']))
    inputs += [helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, [1]),
               helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [1, 1, V]) if last
               else helper.make_tensor_value_info(segment.output_name, TensorProto.FLOAT,
                                                  [1, 'seq', C])]
    if last:
        outputs.append(helper.make_tensor_value_info(ALL_LOGITS, TensorProto.FLOAT, [1, 'seq', V]))
    if ranks:
        outputs.append(helper.make_tensor_value_info(LAST_QUERY, TensorProto.FLOAT,
                                                     [1, 1, H * d]))
    kv_shape = [1, KV, max_length, d]
    with torch.no_grad():
        residual, pending = input_name, None
        for i in range(first, stop):
            block = text.layers[i]
            attn, mlp = block.self_attn, block.mlp
            norm_w = g.weight(f'l{i}.input_norm.weight', block.input_layernorm.weight)
            if pending is None:
                g.node('RMSNormalization', [residual, norm_w], [f'l{i}.x'], axis=-1,
                       epsilon=rms_eps(block.input_layernorm))
            else:                                   # residual add of the previous block + norm
                g.node('SkipSimplifiedLayerNormalization', [pending, residual, norm_w],
                       [f'l{i}.x', '', '', f'l{i}.h'], 'com.microsoft',
                       epsilon=rms_eps(block.input_layernorm))
                residual = f'l{i}.h'
            weight, bias = qkv_weight(attn)
            qkv = g.node('MatMul', [f'l{i}.x', g.weight(f'l{i}.qkv.weight', weight.T)],
                         [f'l{i}.qkv'])[0]
            if bias is not None:                                  # Qwen2: q/k/v biases
                qkv = g.node('Add', [qkv, g.weight(f'l{i}.qkv_bias.weight', bias)],
                             [f'l{i}.qkv_b'])[0]
            past = [past_name(i, 'key'), past_name(i, 'value')]
            present = [present_name(i, 'key'), present_name(i, 'value')]
            inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in past]
            outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape)
                        for n in present]
            if explicit:                   # RoPE at the given positions, then attention without
                sizes = g.weight(f'l{i}.qkv_sizes', [H * d, KV * d, KV * d], np.int64)
                q, k, v = g.node('Split', [qkv, sizes], [f'l{i}.q', f'l{i}.k', f'l{i}.v'],
                                 axis=-1)
                q = g.node('RotaryEmbedding', [q, 'cos_cache', 'sin_cache', POSITION_IDS],
                           [f'l{i}.q_rot'], num_heads=H, interleaved=0)[0]
                k = g.node('RotaryEmbedding', [k, 'cos_cache', 'sin_cache', POSITION_IDS],
                           [f'l{i}.k_rot'], num_heads=KV, interleaved=0)[0]
                g.node('GroupQueryAttention', [q, k, v, *past, SEQLENS_K,
                                               TOTAL_SEQUENCE_LENGTH],
                       [f'l{i}.attn', *present], 'com.microsoft', num_heads=H, kv_num_heads=KV,
                       do_rotary=0, scale=float(attn.scaling))
                if ranks and i == stop - 1:                       # FastV ranks by this query
                    _last_position(g, q, LAST_QUERY)
            else:                            # positions from the cache length, or the given ones
                given = [POSITION_IDS] if rotation == 'step' else []
                g.node('GroupQueryAttention',
                       [qkv, '', '', *past, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, 'cos_cache',
                        'sin_cache', *given], [f'l{i}.attn', *present], 'com.microsoft',
                       num_heads=H, kv_num_heads=KV, do_rotary=1, rotary_interleaved=0,
                       scale=float(attn.scaling))
            g.node('MatMul', [f'l{i}.attn', g.weight(f'l{i}.o.weight', attn.o_proj.weight.T)],
                   [f'l{i}.o'])
            g.node('SkipSimplifiedLayerNormalization',
                   [f'l{i}.o', residual, g.weight(f'l{i}.post_norm.weight',
                                                  block.post_attention_layernorm.weight)],
                   [f'l{i}.x2', '', '', f'l{i}.h2'], 'com.microsoft',
                   epsilon=rms_eps(block.post_attention_layernorm))
            residual = f'l{i}.h2'
            g.node('MatMul', [f'l{i}.x2', g.weight(f'l{i}.gate_up.weight',
                                                   gate_up_weight(mlp).T)], [f'l{i}.gu'])
            g.node('Split', [f'l{i}.gu'], [f'l{i}.gate', f'l{i}.up'], axis=-1, num_outputs=2)
            g.node('QuickGelu', [f'l{i}.gate'], [f'l{i}.act'], 'com.microsoft', alpha=1.0)
            g.node('Mul', [f'l{i}.act', f'l{i}.up'], [f'l{i}.mlp'])
            pending = g.node('MatMul', [f'l{i}.mlp', g.weight(f'l{i}.down.weight',
                                                              mlp.down_proj.weight.T)],
                             [f'l{i}.down'])[0]
        if not last:                              # the residual stream, for the next segment
            g.node('Add', [pending, residual], [segment.output_name])
        else:
            g.node('SkipSimplifiedLayerNormalization',
                   [pending, residual, g.weight('norm.weight', text.norm.weight)], ['normed'],
                   'com.microsoft', epsilon=rms_eps(text.norm))
            g.node('MatMul', ['normed', g.weight('lm_head.weight', model.lm_head.weight.T)],
                   [ALL_LOGITS])                   # every row: speculative decoding checks them
            _last_position(g, ALL_LOGITS, LOGITS)

    graph = helper.make_graph(g.nodes, 'ros2_gmskip_fused_decoder', inputs, outputs,
                              g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET),
                                                    helper.make_opsetid('com.microsoft', 1)],
                              producer_name='ros2_gmskip')
    proto.ir_version = 10
    onnx.save(proto, str(path))
    return len(g.nodes), sorted({n.op_type for n in g.nodes})


def _last_position(g: _Graph, name: str, out: str) -> None:
    """Add `out` = `name`[:, -1:] (the last position of a (1, seq, n) tensor)."""
    for const, value in (('last_start', [-1]), ('last_end', [2 ** 62]), ('seq_axis', [1])):
        if not any(t.name == const for t in g.initializers):
            g.weight(const, value, np.int64)
    g.node('Slice', [name, 'last_start', 'last_end', 'seq_axis'], [out])


def quantize_step_graph(source: Path, out: Path, weights: str) -> int:
    """
    Write the `weights` ('int8' | 'int4') copy of a fused graph to `out` (MatMulNBits).

    Return how many MatMuls it quantized.
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if weights not in WEIGHTS[1:]:
        raise ValueError(f'fused decoder weights must be one of {", ".join(WEIGHTS)}, got '
                         f'{weights!r}')
    quiet = logging.getLogger('onnxruntime.quantization.matmul_nbits_quantizer')
    level = quiet.level
    quiet.setLevel(logging.WARNING)                        # one INFO line per MatMul otherwise
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=int(weights[3:]),
                                         block_size=QUANT_BLOCK_SIZE, is_symmetric=True,
                                         accuracy_level=QUANT_ACCURACY_LEVEL)
        quantizer.process()
    finally:
        quiet.setLevel(level)
    onnx.save(quantizer.model.model, str(out))
    return sum(n.op_type == 'MatMulNBits' for n in quantizer.model.model.graph.node)


def quantize_prefill_graph(source: Path, out: Path) -> None:
    """
    Write the prefill copy of a fused graph to `out`, MatMuls as dynamic int8.

    Weights int8 per tensor, activations quantized per run (MatMulInteger).
    """
    import logging

    import onnx
    from onnxruntime.quantization import quantize_dynamic, QuantType

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)                # the quantizer warns about the contrib ops
    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=['MatMul'],
                         extra_options={'DefaultTensorType': onnx.TensorProto.FLOAT})
    finally:
        quiet.setLevel(level)


def quantize_settings(weights: str, matmuls: int) -> dict:
    """Return the manifest's record of how the decode-step weights were quantized."""
    return {'op': 'MatMulNBits', 'bits': int(weights[3:]), 'block_size': QUANT_BLOCK_SIZE,
            'symmetric': True, 'accuracy_level': QUANT_ACCURACY_LEVEL, 'matmuls': int(matmuls)}
