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
    config.graphs['decoder'].inputs[0]   # TensorSpec('inputs_embeds', ('batch', 'seq', 192))

Supported: LLaVA (`llava`, the project's `gmskip_llava`) with a Llama / Mistral / Qwen2-style
decoder, Idefics3 / SmolVLM (Llama), PaliGemma (Gemma); Qwen2-VL and Qwen2.5-VL (patch-row
vision input for a fixed grid, M-RoPE positions (3, batch, seq): exporters/qwen_vision.py).
Torch-free: works on a transformers config object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ros2_gmskip.bundle_format import (ATTENTION_MASK, BATCH, DecoderShape, GraphSpec,
                                       HIDDEN_STATES, IMAGE_EMBEDS, LAST_TOKEN_ATTENTION, LOGITS,
                                       PAST, PIXEL_VALUES, portable_file, POSITION_IDS, Segment,
                                       SEQ, TensorSpec, TOTAL)
from ros2_gmskip.errors import ModelLoadError

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 17, 20  # TensorRT 10.x parses opsets 9..20; below 17 lacks what we use

# config.model_type of the VLM -> family name; of its decoder -> the decoder styles we export.
SUPPORTED_FAMILIES = {'llava': 'llava', 'gmskip_llava': 'llava', 'idefics3': 'idefics3',
                      'smolvlm': 'idefics3', 'paligemma': 'paligemma', 'qwen2_vl': 'qwen2_vl',
                      'qwen2_5_vl': 'qwen2_5_vl'}
MROPE_FAMILIES = ('qwen2_vl', 'qwen2_5_vl')     # patch-row vision input, 3-row positions
# What the families export does not cover yet lack, named in their one-line refusal.
MISSING = {
    'gemma3': 'bidirectional attention among the image tokens only (token_type_ids), q/k '
              'norms and pre/post-feedforward norms in the block spec, and sliding-window '
              'layers with their own RoPE base in the decoder graph',
    'llava_onevision': 'anyres tiles with row newlines in the torch-free preprocessing',
}
SUPPORTED_DECODERS = ('llama', 'mistral', 'qwen2', 'gemma', 'qwen2_vl_text', 'qwen2_5_vl_text')
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3', 'yarn')   # static inv_freq: traceable
SUPPORTED_SELECT_STRATEGIES = ('full', 'default')


@dataclass
class ExportConfig:
    """
    Declare a VLM bundle's graphs: vision, and the decoder's segments with their KV tensors.

    A bundle without token skipping has one segment (decoder.onnx: embeddings -> logits). FastV
    and KV removal from a layer split the decoder there (`splits`; onnx_export.py says why). A
    plan-ladder bundle has one such config per rung (exporters/ladder_export.py).
    """

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
    splits: tuple[int, ...] = ()     # decoder split before these blocks (token skipping)
    rank_at: int | None = None       # FastV K: the segment ending here outputs attention
    pixel_shape: tuple[int, ...] | None = None   # vision input; None: (batch, 3, H, W)
    position_rows: int = 1           # 3: M-RoPE position_ids (3, batch, seq)
    segments: list[Segment] = field(init=False)
    graphs: dict[str, GraphSpec] = field(init=False)     # vision and each segment's name

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ModelLoadError(f'opset {self.opset} is not supported: use '
                                 f'{MIN_OPSET}..{MAX_OPSET} '
                                 '(TensorRT 10 parses up to opset 20)')
        d = self.decoder
        H, W = self.image_size
        bad = [b for b in self.splits if not 0 < b < d.num_layers]
        if bad or list(self.splits) != sorted(set(self.splits)):
            raise ModelLoadError(f'decoder splits {list(self.splits)} must be increasing block '
                                 f'indices in 1..{d.num_layers - 1}')
        ranks = {self.rank_at} if self.rank_at is not None else set()
        if not ranks <= set(self.splits):
            raise ModelLoadError(f'FastV K={sorted(ranks)} must be among the splits')
        bounds = [0, *self.splits, d.num_layers]
        self.segments = [Segment(first=first, stop=stop,
                                 last=stop == d.num_layers,
                                 ranks=stop in ranks, portable=portable_file(i))
                         for i, (first, stop) in enumerate(zip(bounds, bounds[1:]))]
        images = BATCH if self.pixel_shape is None else 1     # patch rows: one image
        self.graphs = {'vision': GraphSpec(
            inputs=(TensorSpec(PIXEL_VALUES, self.pixel_shape or (BATCH, 3, H, W)),),
            outputs=(TensorSpec(IMAGE_EMBEDS, (images, self.num_image_tokens, d.hidden_size),
                                atol=self.embeds_atol),))}
        self.graphs.update({seg.name: self._graph(seg) for seg in self.segments})

    def _graph(self, seg: Segment) -> GraphSpec:
        """Return a segment's portable graph interface."""
        d = self.decoder
        kv_past = (BATCH, d.num_kv_heads, PAST, d.head_dim)
        kv_total = (BATCH, d.num_kv_heads, TOTAL, d.head_dim)
        hidden = (BATCH, SEQ, d.hidden_size)
        inputs = [TensorSpec(seg.input_name, hidden),
                  TensorSpec(ATTENTION_MASK, (BATCH, TOTAL), 'int64'),     # total = past + seq
                  TensorSpec(POSITION_IDS, (BATCH, SEQ) if self.position_rows == 1
                             else (self.position_rows, BATCH, SEQ), 'int64')]
        outputs = [TensorSpec(LOGITS, (BATCH, SEQ, d.vocab_size), atol=self.logits_atol)
                   if seg.last else TensorSpec(HIDDEN_STATES, hidden, atol=self.hidden_atol)]
        if seg.ranks:
            outputs.append(TensorSpec(LAST_TOKEN_ATTENTION, (BATCH, TOTAL),
                                      atol=self.attention_atol))
        inputs += [TensorSpec(name, kv_past) for name in seg.past_names()]
        outputs += [TensorSpec(name, kv_total, atol=self.kv_atol) for name in seg.present_names()]
        return GraphSpec(inputs=tuple(inputs), outputs=tuple(outputs))


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def family_of_config(config: Any) -> str:
    """Return the export family of a VLM config; ModelLoadError naming what is supported."""
    model_type = _get(config, 'model_type')
    if model_type in MISSING:
        raise ModelLoadError(f'export of {model_type} is not supported yet: it needs '
                             f'{MISSING[model_type]}')
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f'export of {model_type} is not supported yet: supported are '
                             f'{", ".join(sorted(SUPPORTED_FAMILIES))} (with a '
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
                      rank_at: int | None = None, num_image_tokens: int | None = None,
                      pixel_shape: tuple[int, ...] | None = None) -> ExportConfig:
    """
    Return the ExportConfig of a VLM config.

    After pruning, pass the remaining `num_layers`; for token skipping, the decoder `splits` and
    FastV's K as `rank_at`. Qwen
    (MROPE_FAMILIES): the layout fixed for the camera (exporters/qwen_vision.py) as `image_size`
    (resized), `num_image_tokens`, `pixel_shape`.
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
    if family in MROPE_FAMILIES:
        strategy = 'full'                # no CLS token to drop: the merger's rows are the tokens
    if strategy not in SUPPORTED_SELECT_STRATEGIES:
        raise ModelLoadError(f'export with vision_feature_select_strategy {strategy!r} is not '
                             'supported yet: supported are '
                             f'{", ".join(SUPPORTED_SELECT_STRATEGIES)}')
    heads = _get(text, 'num_attention_heads')
    hidden = _get(text, 'hidden_size')
    side = _get(vision, 'image_size')
    patch = _get(vision, 'patch_size')
    if family in MROPE_FAMILIES:         # before the camera size is known: an empty image
        image_size, num_image_tokens = image_size or (0, 0), num_image_tokens or 0
        pixel_shape = pixel_shape or (0, 0)
    else:
        image_size = image_size or (side, side)
        patches = (image_size[0] // patch) * (image_size[1] // patch)
        if family == 'idefics3':        # per tile, after the pixel shuffle
            num_image_tokens = patches // _get(config, 'scale_factor') ** 2
        elif family == 'paligemma':     # SigLIP: every patch, no CLS
            num_image_tokens = patches
        else:
            num_image_tokens = patches + int(_get(vision, 'model_type') == 'clip_vision_model')
            num_image_tokens -= int(strategy == 'default')
    shape = DecoderShape(
        num_layers=num_layers if num_layers is not None else _get(text, 'num_hidden_layers'),
        num_heads=heads,
        num_kv_heads=_get(text, 'num_key_value_heads') or heads,
        head_dim=_get(text, 'head_dim') or hidden // heads,
        hidden_size=hidden,
        vocab_size=_get(text, 'vocab_size'),
        rope_theta=rope.get('rope_theta'), family=family, decoder_type=decoder_type)
    return ExportConfig(family=family, decoder_type=decoder_type, image_size=tuple(image_size),
                        num_image_tokens=int(num_image_tokens), decoder=shape, opset=opset,
                        splits=tuple(splits), rank_at=rank_at, pixel_shape=pixel_shape,
                        position_rows=3 if family in MROPE_FAMILIES else 1)
