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
What a model family exports to: graph inputs/outputs with symbolic axes, opset, tolerances.

Optimum-style: one `ExportConfig` per model family declares, for each graph, the tensors with
their axes (an int for a fixed size, a name for a dynamic one) and, for each output, the absolute
tolerance validation holds it to. The exporter, the validator and the manifest all read these
specs, so the graph, its check and its description cannot drift apart.

    config = export_config_for(model.config, num_layers=14)
    config.decoder_inputs[0]      # TensorSpec('inputs_embeds', ('batch', 'seq', 192), 'float32')

Supported: LLaVA (`llava`, the project's `gmskip_llava`) with a Llama / Mistral / Qwen2-style
decoder. Torch-free: works on a transformers config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ros2_gmskip.errors import ModelLoadError

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 17, 20  # TensorRT 10.x parses opsets 9..20; below 17 lacks what we use

# Dynamic axis names (also the names the ONNX graphs carry).
BATCH, SEQ, PAST, TOTAL = 'batch', 'seq', 'past', 'total'

# config.model_type of the VLM -> family name; of its decoder -> the decoder styles we export.
SUPPORTED_FAMILIES = {'llava': 'llava', 'gmskip_llava': 'llava'}
SUPPORTED_DECODERS = ('llama', 'mistral', 'qwen2')
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3', 'yarn')   # static inv_freq: traceable
SUPPORTED_SELECT_STRATEGIES = ('full', 'default')
ATTENTION_EXTRAS = ('q_norm', 'k_norm', 'sinks')   # attention parts no exported graph implements


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, axes (int = fixed, str = dynamic axis name), dtype."""

    name: str
    axes: tuple[int | str, ...]
    dtype: str = 'float32'
    atol: float | None = None        # outputs only: max |onnx - torch| validation accepts

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}

    def to_dict(self) -> dict:
        d = {'name': self.name, 'shape': list(self.axes), 'dtype': self.dtype}
        if self.atol is not None:
            d['atol'] = self.atol
        return d


@dataclass(frozen=True)
class DecoderShape:
    """What the decoder graph's shapes depend on (after pruning)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float | None


@dataclass(frozen=True)
class DecoderSegment:
    """
    One decoder graph: blocks [first, stop) of the (pruned) decoder.

    A bundle without token skipping has one segment (decoder.onnx: embeddings -> logits). FastV
    and KV removal from a layer split the decoder there (see onnx_export.py for why): the first
    segment reads `inputs_embeds`, later ones `inputs_hidden` (the previous segment's
    `hidden_states`); only the last ends in `logits`; the segment that ends at FastV's K also
    outputs `last_token_attention`.
    """

    file: str
    first: int
    stop: int
    last: bool
    ranks: bool                       # outputs last_token_attention (FastV ranks by it)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def name(self) -> str:
        return self.file[:-len('.onnx')]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    def to_manifest(self) -> dict:
        return {'file': self.file, 'layers': [self.first, self.stop], 'input': self.input_name,
                'output': self.output_name, 'ranks': self.ranks}


def segment_file(index: int) -> str:
    """decoder.onnx, decoder.1.onnx, decoder.2.onnx, ..."""
    return 'decoder.onnx' if index == 0 else f'decoder.{index}.onnx'


@dataclass
class ExportConfig:
    """The two graphs of a VLM bundle: vision (pixels -> image embeddings), decoder (with KV)."""

    family: str
    decoder_type: str
    image_size: tuple[int, int]      # (H, W) the vision graph takes
    num_image_tokens: int
    decoder: DecoderShape
    opset: int = DEFAULT_OPSET
    logits_atol: float = 1e-3        # fp32 export vs eager torch
    kv_atol: float = 1e-4
    embeds_atol: float = 1e-4
    hidden_atol: float = 1e-3        # between decoder segments (residual stream, unnormalised)
    attention_atol: float = 1e-5     # probabilities
    vision_inputs: list[TensorSpec] = field(init=False)
    vision_outputs: list[TensorSpec] = field(init=False)
    splits: tuple[int, ...] = ()     # decoder split before these blocks (token skipping)
    rank_at: int | None = None       # FastV K: the segment ending here outputs attention
    decoder_inputs: list[TensorSpec] = field(init=False)
    decoder_outputs: list[TensorSpec] = field(init=False)
    segments: list[DecoderSegment] = field(init=False)

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ModelLoadError(f'opset {self.opset} is not supported: use '
                                 f'{MIN_OPSET}..{MAX_OPSET} '
                                 '(TensorRT 10 parses up to opset 20)')
        d = self.decoder
        H, W = self.image_size
        self.vision_inputs = [TensorSpec('pixel_values', (BATCH, 3, H, W))]
        self.vision_outputs = [TensorSpec('image_embeds', (BATCH, self.num_image_tokens,
                                                           d.hidden_size), atol=self.embeds_atol)]
        bad = [b for b in self.splits if not 0 < b < d.num_layers]
        if bad or list(self.splits) != sorted(set(self.splits)):
            raise ModelLoadError(f'decoder splits {list(self.splits)} must be increasing block '
                                 f'indices in 1..{d.num_layers - 1}')
        if self.rank_at is not None and self.rank_at not in self.splits:
            raise ModelLoadError(f'FastV K={self.rank_at} must be one of the splits')
        bounds = [0, *self.splits, d.num_layers]
        self.segments = [self._segment(i, first, stop, stop == d.num_layers)
                         for i, (first, stop) in enumerate(zip(bounds, bounds[1:]))]
        self.decoder_inputs = list(self.segments[0].inputs)
        self.decoder_outputs = list(self.segments[0].outputs)

    def _segment(self, index: int, first: int, stop: int, last: bool) -> DecoderSegment:
        d = self.decoder
        kv_past = (BATCH, d.num_kv_heads, PAST, d.head_dim)
        kv_total = (BATCH, d.num_kv_heads, TOTAL, d.head_dim)
        hidden = (BATCH, SEQ, d.hidden_size)
        inputs = [
            TensorSpec('inputs_embeds' if first == 0 else 'inputs_hidden', hidden),
            TensorSpec('attention_mask', (BATCH, TOTAL), 'int64'),     # total = past + seq
            TensorSpec('position_ids', (BATCH, SEQ), 'int64'),
        ]
        outputs = [TensorSpec('logits', (BATCH, SEQ, d.vocab_size), atol=self.logits_atol)
                   if last else TensorSpec('hidden_states', hidden, atol=self.hidden_atol)]
        ranks = self.rank_at == stop
        if ranks:
            outputs.append(TensorSpec('last_token_attention', (BATCH, TOTAL),
                                      atol=self.attention_atol))
        for i in range(first, stop):
            for kind in ('key', 'value'):
                inputs.append(TensorSpec(past_name(i, kind), kv_past))
                outputs.append(TensorSpec(present_name(i, kind), kv_total, atol=self.kv_atol))
        return DecoderSegment(file=segment_file(index), first=first, stop=stop, last=last,
                              ranks=ranks, inputs=tuple(inputs), outputs=tuple(outputs))

    def graphs(self) -> dict[str, dict[str, list[dict]]]:
        """Return the manifest's `graphs` entry: vision, then one entry per decoder segment."""
        out = {'vision': {'inputs': [s.to_dict() for s in self.vision_inputs],
                          'outputs': [s.to_dict() for s in self.vision_outputs]}}
        for seg in self.segments:
            out[seg.name] = {'inputs': [s.to_dict() for s in seg.inputs],
                             'outputs': [s.to_dict() for s in seg.outputs]}
        return out


def past_name(layer: int, kind: str) -> str:
    return f'past_key_values.{layer}.{kind}'


def present_name(layer: int, kind: str) -> str:
    return f'present.{layer}.{kind}'


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def family_of_config(config: Any) -> str:
    """'llava' for a supported VLM config, else ModelLoadError naming what is supported."""
    model_type = _get(config, 'model_type')
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f'export of {model_type} is not supported yet: supported are '
                             f'{", ".join(sorted(SUPPORTED_FAMILIES))} (LLaVA with a '
                             f'{"/".join(SUPPORTED_DECODERS)} decoder)')
    return SUPPORTED_FAMILIES[model_type]


def attention_windows(text_config: Any, num_layers: int) -> list[int | None]:
    """
    Return each decoder block's sliding attention window, None for full attention.

    Sliding windows: Mistral; Qwen2 with use_sliding_window.
    """
    window = _get(text_config, 'sliding_window')
    layer_types = _get(text_config, 'layer_types')
    return [window if window and (layer_types is None or layer_types[i] == 'sliding_attention')
            else None for i in range(num_layers)]


def rope_parameters(text_config: Any) -> dict:
    """Get the decoder's RoPE settings (v5 `rope_parameters`; v4 `rope_theta`, `rope_scaling`)."""
    params = _get(text_config, 'rope_parameters')
    if isinstance(params, dict) and params:
        return dict(params)
    params = dict(_get(text_config, 'rope_scaling') or {})
    params.setdefault('rope_type', params.get('type', 'default'))
    params.setdefault('rope_theta', _get(text_config, 'rope_theta', 10000.0))
    return params


def export_config_for(config: Any, num_layers: int | None = None, opset: int = DEFAULT_OPSET,
                      image_size: tuple[int, int] | None = None, splits: tuple[int, ...] = (),
                      rank_at: int | None = None) -> ExportConfig:
    """
    Return the ExportConfig of a VLM config.

    After pruning, pass the remaining `num_layers`; for token skipping, the decoder `splits` and
    FastV's K as `rank_at`.
    """
    family = family_of_config(config)
    text = _get(config, 'text_config')
    vision = _get(config, 'vision_config')
    decoder_type = _get(text, 'model_type')
    if decoder_type not in SUPPORTED_DECODERS:
        raise ModelLoadError(f'export of {family} with a {decoder_type} decoder is not supported '
                             'yet: '
                             f'supported decoders are {", ".join(SUPPORTED_DECODERS)}')
    rope = rope_parameters(text)
    if rope.get('rope_type', 'default') not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(f'export of rope_type {rope.get("rope_type")!r} is not supported yet '
                             f'(it changes with the sequence length): supported are '
                             f'{", ".join(SUPPORTED_ROPE_TYPES)}')
    strategy = _get(config, 'vision_feature_select_strategy', 'default')
    if strategy not in SUPPORTED_SELECT_STRATEGIES:
        raise ModelLoadError(f'export with vision_feature_select_strategy {strategy!r} is not '
                             'supported yet: supported are '
                             f'{", ".join(SUPPORTED_SELECT_STRATEGIES)}')
    heads = _get(text, 'num_attention_heads')
    hidden = _get(text, 'hidden_size')
    side = _get(vision, 'image_size')
    patch = _get(vision, 'patch_size')
    if image_size is None:
        image_size = (side, side)
    patches = (image_size[0] // patch) * (image_size[1] // patch)
    num_image_tokens = patches + (1 if _get(vision, 'model_type') == 'clip_vision_model' else 0)
    if strategy == 'default':
        num_image_tokens -= 1
    shape = DecoderShape(
        num_layers=num_layers if num_layers is not None else _get(text, 'num_hidden_layers'),
        num_heads=heads,
        num_kv_heads=_get(text, 'num_key_value_heads') or heads,
        head_dim=_get(text, 'head_dim') or hidden // heads,
        hidden_size=hidden,
        vocab_size=_get(text, 'vocab_size'),
        rope_theta=rope.get('rope_theta'))
    return ExportConfig(family=family, decoder_type=decoder_type, image_size=tuple(image_size),
                        num_image_tokens=num_image_tokens, decoder=shape, opset=opset,
                        splits=tuple(splits), rank_at=rank_at)
