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

    entry = build_fused_decoder(model, Path('bundle/decoder.fused.onnx'), max_length=256)
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

10 nodes per block instead of ~32, and no KV copies: the runtime (runtime/fused_decode.py) binds
one buffer per layer and kind, (1, kv_heads, max_length, head_dim), as both `past` and `present`,
so GroupQueryAttention appends the new rows in place. Measured on the 2-core CPU (10-block pruned
default model, 1 thread, `ros2-gmskip bench --rounds 3`: ort_pruned vs ort_pruned_portable):
decode 32.5 -> 19.6 ms per frame (~16 tokens), frame 48.4 -> 35.6 ms, identical text
(bench/results/bench.json; the step binding of runtime/fused_decode.py included). What a decode
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
Batch 1 only: that is how the runtime decodes (one camera frame per request).

Token skipping (a bundle exported with FastV / visual KV removal)
------------------------------------------------------------------
GroupQueryAttention's own RoPE takes each new row's position from the cache length. FastV keeps
the original positions of the rows it keeps, and KV removal shortens the cache under them, so in
a token-skipping bundle both would be wrong. Such a bundle gets one fused graph per decoder.onnx
segment (`build_fused_segments`: decoder.fused.onnx, decoder.fused.1.onnx, ...: the same blocks,
input and output names) with explicit positions: an input `position_ids` (1, seq) int64, q|k|v
split and rotated by ONNX RotaryEmbedding (opset 23), then GroupQueryAttention with do_rotary=0
(3 more nodes per block). Each segment keeps its own cache length in `seqlens_k`. The segment
that ends at FastV's K also outputs `last_query`, the rotated query of its last block at the last
position, so the runtime can rank the image tokens from it and the cached keys
(runtime/fused_token_decode.py). Why segments rather than pruning inside one graph: as for
decoder.onnx (exporters/onnx_export.py). A decode step adds one row at a known position, which
GroupQueryAttention's own RoPE handles when given `position_ids` (it cannot rotate a pruned
prompt: it assumes consecutive positions), so the quantized decode-step graphs of such a bundle
are built that way (`step_graph`), 10 nodes per block again; the fp32 bundle keeps one graph per
segment for prefill and steps, so as not to hold the weights twice.

Quantized graphs (`export --fused-weights int4|int8`)
----------------------------------------------------
Since a decode step is weight streaming, fewer weight bytes are the remaining lever on a CPU.
`quantize_decode_graph` rewrites every MatMul of the fused graph as com.microsoft.MatMulNBits
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
from ros2_gmskip.exporters.export_config import (
    ATTENTION_EXTRAS,
    attention_windows,
    SUPPORTED_ROPE_TYPES,
)

FUSED_DECODER = 'decoder.fused.onnx'
WEIGHTS = ('fp32', 'int8', 'int4')        # --fused-weights: the decode-step graph's MatMul weights
QUANT_BLOCK_SIZE = 32
QUANT_ACCURACY_LEVEL = 4                   # MatMulNBits computes with int8 activations
MIN_QUANTIZED_AGREEMENT = 0.8              # greedy texts identical to generate, share of scenes
OPSET = 23                         # RMSNormalization; the contrib ops live in com.microsoft v1
NORMS = ('LlamaRMSNorm', 'MistralRMSNorm', 'Qwen2RMSNorm')
# The token-skipping segment ending at FastV's K also outputs its last block's rotated query at
# the last position (1, 1, H*d): the runtime ranks the image tokens by it.
RANK_OUTPUT = 'last_query'
# The last graph's logits at every new row (1, seq, V), next to `logits` (the last row): a
# speculative decode run checks one drafted token per row (runtime/draft.py).
ALL_LOGITS = 'all_logits'


def _text(model):
    return model.model.language_model


def fused_unsupported(model) -> str | None:
    """Why `model`'s decoder cannot be written as the fused graph, or None if it can."""
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
        extra = [n for n in ATTENTION_EXTRAS if hasattr(attn, n)]
        if extra:
            return f'block {i} has attention parts {extra}'
        norms = {type(block.input_layernorm).__name__,
                 type(block.post_attention_layernorm).__name__}
        if not norms <= set(NORMS):
            return f'block {i} norms {sorted(norms)} are not a Llama-style RMSNorm'
        if not all(hasattr(mlp, n) for n in ('gate_proj', 'up_proj', 'down_proj')):
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


def _eps(norm) -> float:
    return float(getattr(norm, 'variance_epsilon', getattr(norm, 'eps', 1e-6)))


def build_fused_decoder(model, path: Path, max_length: int, segment=None,
                        step_graph: bool = False) -> dict:
    """
    Write the fused decoder of `model` (already pruned) to `path`; -> its manifest entry.

    `max_length`: the KV buffers' and RoPE tables' length (prompt + generated tokens); the
    runtime decodes longer requests with decoder.onnx. `segment` (an export_config
    DecoderSegment): write only its blocks, with explicit positions, as the token-skipping graphs
    need (see "Token skipping" above). `step_graph` (with `segment`): the segment's decode-step
    graph instead: GroupQueryAttention rotates with the given `position_ids` itself (right for one
    new row, not for a pruned prompt), 10 nodes per block as the plain graph, no `last_query`.
    Raises ValueError if `fused_unsupported(model)` names a reason.
    """
    import onnx
    from onnx import helper, TensorProto
    import torch

    reason = fused_unsupported(model)
    if reason:
        raise ValueError(f'no fused decoder for this model: {reason}')
    text = _text(model)
    cfg = text.config
    H = cfg.num_attention_heads
    KV = cfg.num_key_value_heads or H
    d = getattr(cfg, 'head_dim', None) or cfg.hidden_size // H
    C, V = cfg.hidden_size, model.lm_head.out_features
    first, stop = (0, len(text.layers)) if segment is None else (segment.first, segment.stop)
    last = stop == len(text.layers)
    explicit = segment is not None and not step_graph
    ranks = explicit and segment.ranks
    g = _Graph()

    # RoPE tables (max_length, d/2) from the model's own inverse frequencies and scaling.
    rotary = text.rotary_emb
    scale = float(getattr(rotary, 'attention_scaling', 1.0))
    angles = np.arange(max_length, dtype=np.float64)[:, None] * \
        rotary.inv_freq.detach().double().cpu().numpy()[None]
    g.weight('cos_cache', np.cos(angles) * scale)
    g.weight('sin_cache', np.sin(angles) * scale)

    input_name = 'inputs_embeds' if segment is None else segment.input_name
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 'seq', C])]
    if segment is not None:
        inputs.append(helper.make_tensor_value_info('position_ids', TensorProto.INT64,
                                                    [1, 'seq']))
    inputs += [helper.make_tensor_value_info('seqlens_k', TensorProto.INT32, [1]),
               helper.make_tensor_value_info('total_sequence_length', TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 1, V]) if last
               else helper.make_tensor_value_info(segment.output_name, TensorProto.FLOAT,
                                                  [1, 'seq', C])]
    if last:
        outputs.append(helper.make_tensor_value_info(ALL_LOGITS, TensorProto.FLOAT, [1, 'seq', V]))
    if ranks:
        outputs.append(helper.make_tensor_value_info(RANK_OUTPUT, TensorProto.FLOAT,
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
                       epsilon=_eps(block.input_layernorm))
            else:                                   # residual add of the previous block + norm
                g.node('SkipSimplifiedLayerNormalization', [pending, residual, norm_w],
                       [f'l{i}.x', '', '', f'l{i}.h'], 'com.microsoft',
                       epsilon=_eps(block.input_layernorm))
                residual = f'l{i}.h'
            projs = (attn.q_proj, attn.k_proj, attn.v_proj)
            qkv = g.node('MatMul', [f'l{i}.x', g.weight(f'l{i}.qkv.weight', torch.cat(
                [p.weight for p in projs]).T)], [f'l{i}.qkv'])[0]
            if any(p.bias is not None for p in projs):           # Qwen2: q/k/v biases
                bias = torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features)
                                  for p in projs])
                qkv = g.node('Add', [qkv, g.weight(f'l{i}.qkv_bias.weight', bias)],
                             [f'l{i}.qkv_b'])[0]
            past = [f'past_key_values.{i}.key', f'past_key_values.{i}.value']
            present = [f'present.{i}.key', f'present.{i}.value']
            inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in past]
            outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape)
                        for n in present]
            if explicit:                   # RoPE at the given positions, then attention without
                sizes = g.weight(f'l{i}.qkv_sizes', [H * d, KV * d, KV * d], np.int64)
                q, k, v = g.node('Split', [qkv, sizes], [f'l{i}.q', f'l{i}.k', f'l{i}.v'],
                                 axis=-1)
                q = g.node('RotaryEmbedding', [q, 'cos_cache', 'sin_cache', 'position_ids'],
                           [f'l{i}.q_rot'], num_heads=H, interleaved=0)[0]
                k = g.node('RotaryEmbedding', [k, 'cos_cache', 'sin_cache', 'position_ids'],
                           [f'l{i}.k_rot'], num_heads=KV, interleaved=0)[0]
                g.node('GroupQueryAttention', [q, k, v, *past, 'seqlens_k',
                                               'total_sequence_length'],
                       [f'l{i}.attn', *present], 'com.microsoft', num_heads=H, kv_num_heads=KV,
                       do_rotary=0, scale=float(attn.scaling))
                if ranks and i == stop - 1:                       # FastV ranks by this query
                    _last_position(g, q, RANK_OUTPUT)
            else:                            # positions from the cache length, or the given ones
                given = ['position_ids'] if step_graph else []
                g.node('GroupQueryAttention',
                       [qkv, '', '', *past, 'seqlens_k', 'total_sequence_length', 'cos_cache',
                        'sin_cache', *given], [f'l{i}.attn', *present], 'com.microsoft',
                       num_heads=H, kv_num_heads=KV, do_rotary=1, rotary_interleaved=0,
                       scale=float(attn.scaling))
            g.node('MatMul', [f'l{i}.attn', g.weight(f'l{i}.o.weight', attn.o_proj.weight.T)],
                   [f'l{i}.o'])
            g.node('SkipSimplifiedLayerNormalization',
                   [f'l{i}.o', residual, g.weight(f'l{i}.post_norm.weight',
                                                  block.post_attention_layernorm.weight)],
                   [f'l{i}.x2', '', '', f'l{i}.h2'], 'com.microsoft',
                   epsilon=_eps(block.post_attention_layernorm))
            residual = f'l{i}.h2'
            g.node('MatMul', [f'l{i}.x2', g.weight(f'l{i}.gate_up.weight', torch.cat(
                [mlp.gate_proj.weight, mlp.up_proj.weight]).T)], [f'l{i}.gu'])
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
                   'com.microsoft', epsilon=_eps(text.norm))
            g.node('MatMul', ['normed', g.weight('lm_head.weight', model.lm_head.weight.T)],
                   [ALL_LOGITS])                   # every row: speculative decoding checks them
            _last_position(g, ALL_LOGITS, 'logits')

    graph = helper.make_graph(g.nodes, 'ros2_gmskip_fused_decoder', inputs, outputs,
                              g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET),
                                                    helper.make_opsetid('com.microsoft', 1)],
                              producer_name='ros2_gmskip')
    proto.ir_version = 10
    onnx.save(proto, str(path))
    entry = {'file': Path(path).name, 'max_length': int(max_length), 'opset': OPSET,
             'num_layers': len(text.layers), 'nodes': len(g.nodes),
             'ops': sorted({n.op_type for n in g.nodes})}
    if segment is not None:
        entry.update({'layers': [first, stop], 'input': input_name,
                      'output': 'logits' if last else segment.output_name, 'ranks': ranks})
    return entry


def _last_position(g: _Graph, name: str, out: str) -> None:
    """`out` = `name`[:, -1:] (the last position of a (1, seq, n) tensor)."""
    for const, value in (('last_start', [-1]), ('last_end', [2 ** 62]), ('seq_axis', [1])):
        if not any(t.name == const for t in g.initializers):
            g.weight(const, value, np.int64)
    g.node('Slice', [name, 'last_start', 'last_end', 'seq_axis'], [out])


def fused_segment_file(index: int) -> str:
    """Return decoder.fused.onnx, decoder.fused.1.onnx, ...: one graph per decoder.onnx segment."""
    return FUSED_DECODER if index == 0 else FUSED_DECODER.replace('.onnx', f'.{index}.onnx')


def build_fused_segments(model, folder: Path, max_length: int, segments) -> dict:
    """
    Write the token-skipping variant: one explicit-position fused graph per decoder segment.

    The graphs (the same blocks, input and output names as decoder.onnx's segments) go to
    `folder`; -> the manifest entry: the first graph's fields plus 'positions': 'explicit',
    'attention_scale' and 'segments' (one entry per graph: file, layers, input, output, ranks).
    """
    entries = [build_fused_decoder(model, Path(folder) / fused_segment_file(i), max_length, seg)
               for i, seg in enumerate(segments)]
    attn = _text(model).layers[0].self_attn
    per_segment = ('layers', 'input', 'output', 'ranks')
    entry = {k: v for k, v in entries[0].items() if k not in per_segment}
    entry.update({'nodes': sum(e['nodes'] for e in entries),
                  'ops': sorted({op for e in entries for op in e['ops']}),
                  'positions': 'explicit', 'attention_scale': float(attn.scaling),
                  'segments': [{k: e[k] for k in ('file', 'layers', 'input', 'output', 'ranks')}
                               for e in entries]})
    return entry


def decode_graph_file(weights: str, fused_file: str = FUSED_DECODER) -> str:
    """
    Return the file name of the quantized decode-step copy of `fused_file`.

    E.g. decoder.fused.int4.onnx (decoder.fused.1.int4.onnx for a second token-skipping segment).
    """
    return fused_file.replace('.onnx', f'.{weights}.onnx')


def quantize_decode_graph(fused_path: Path, weights: str, out_name: str | None = None) -> dict:
    """
    Write the `weights` ('int8' | 'int4') copy of the fused graph beside it (MatMulNBits).

    It is named `out_name` (default decode_graph_file); -> the manifest fields that describe it.
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if weights not in WEIGHTS[1:]:
        raise ValueError(f'fused decoder weights must be one of {", ".join(WEIGHTS)}, got '
                         f'{weights!r}')
    bits = int(weights[3:])
    quiet = logging.getLogger('onnxruntime.quantization.matmul_nbits_quantizer')
    level = quiet.level
    quiet.setLevel(logging.WARNING)                        # one INFO line per MatMul otherwise
    try:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fused_path)), bits=bits,
                                         block_size=QUANT_BLOCK_SIZE, is_symmetric=True,
                                         accuracy_level=QUANT_ACCURACY_LEVEL)
        quantizer.process()
    finally:
        quiet.setLevel(level)
    out = Path(fused_path).with_name(out_name or decode_graph_file(weights,
                                                                   Path(fused_path).name))
    onnx.save(quantizer.model.model, str(out))
    quantized = sum(n.op_type == 'MatMulNBits' for n in quantizer.model.model.graph.node)
    return {'decode_file': out.name, 'decode_weights': weights,
            'quantization': quantize_settings(weights, quantized)}


def prefill_graph_file(fused_file: str = FUSED_DECODER) -> str:
    """File name of the int8 prefill copy of `fused_file`, e.g. decoder.fused.prefill.int8.onnx."""
    return fused_file.replace('.onnx', '.prefill.int8.onnx')


def quantize_prefill_graph(fused_path: Path) -> str:
    """
    Write the prefill copy of the fused graph beside it, MatMuls as dynamic int8.

    Weights int8 per tensor, activations quantized per run (MatMulInteger); -> its file name.
    """
    import logging

    import onnx
    from onnxruntime.quantization import quantize_dynamic, QuantType

    out = Path(fused_path).with_name(prefill_graph_file(Path(fused_path).name))
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)                # the quantizer warns about the contrib ops
    try:
        quantize_dynamic(str(fused_path), str(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=['MatMul'],
                         extra_options={'DefaultTensorType': onnx.TensorProto.FLOAT})
    finally:
        quiet.setLevel(level)
    return out.name


def quantize_settings(weights: str, matmuls: int) -> dict:
    """Return the manifest's record of how the decode-step weights were quantized."""
    return {'op': 'MatMulNBits', 'bits': int(weights[3:]), 'block_size': QUANT_BLOCK_SIZE,
            'symmetric': True, 'accuracy_level': QUANT_ACCURACY_LEVEL, 'matmuls': int(matmuls)}
