"""What a model family exports to: graph inputs/outputs with symbolic axes, opset, tolerances.

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
MIN_OPSET, MAX_OPSET = 17, 20        # TensorRT 10.x parses opsets 9..20; below 17 lacks what we use

# Dynamic axis names (also the names the ONNX graphs carry).
BATCH, SEQ, PAST, TOTAL = 'batch', 'seq', 'past', 'total'

# config.model_type of the VLM -> family name; of its decoder -> the decoder styles we export.
SUPPORTED_FAMILIES = {'llava': 'llava', 'gmskip_llava': 'llava'}
SUPPORTED_DECODERS = ('llama', 'mistral', 'qwen2')
SUPPORTED_ROPE_TYPES = ('default', 'linear', 'llama3', 'yarn')   # static inv_freq: traceable
SUPPORTED_SELECT_STRATEGIES = ('full', 'default')


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


@dataclass
class ExportConfig:
    """The two graphs of a VLM bundle: vision (pixels -> image embeddings) and decoder (with KV)."""

    family: str
    decoder_type: str
    image_size: tuple[int, int]      # (H, W) the vision graph takes
    num_image_tokens: int
    decoder: DecoderShape
    opset: int = DEFAULT_OPSET
    logits_atol: float = 1e-3        # fp32 export vs eager torch
    kv_atol: float = 1e-4
    embeds_atol: float = 1e-4
    vision_inputs: list[TensorSpec] = field(init=False)
    vision_outputs: list[TensorSpec] = field(init=False)
    decoder_inputs: list[TensorSpec] = field(init=False)
    decoder_outputs: list[TensorSpec] = field(init=False)

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
        kv_past = (BATCH, d.num_kv_heads, PAST, d.head_dim)
        kv_total = (BATCH, d.num_kv_heads, TOTAL, d.head_dim)
        self.decoder_inputs = [
            TensorSpec('inputs_embeds', (BATCH, SEQ, d.hidden_size)),
            TensorSpec('attention_mask', (BATCH, TOTAL), 'int64'),     # total = past + seq
            TensorSpec('position_ids', (BATCH, SEQ), 'int64'),
        ]
        self.decoder_outputs = [TensorSpec('logits', (BATCH, SEQ, d.vocab_size),
                                           atol=self.logits_atol)]
        for i in range(d.num_layers):
            for kind in ('key', 'value'):
                self.decoder_inputs.append(TensorSpec(past_name(i, kind), kv_past))
                self.decoder_outputs.append(TensorSpec(present_name(i, kind), kv_total,
                                                       atol=self.kv_atol))

    def graphs(self) -> dict[str, dict[str, list[dict]]]:
        """The manifest's `graphs` entry."""
        return {
            'vision': {'inputs': [s.to_dict() for s in self.vision_inputs],
                       'outputs': [s.to_dict() for s in self.vision_outputs]},
            'decoder': {'inputs': [s.to_dict() for s in self.decoder_inputs],
                        'outputs': [s.to_dict() for s in self.decoder_outputs]},
        }


def past_name(layer: int, kind: str) -> str:
    return f'past_key_values.{layer}.{kind}'


def present_name(layer: int, kind: str) -> str:
    return f'present.{layer}.{kind}'


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def family_of_config(config: Any) -> str:
    """'llava' for a supported VLM config, else ModelLoadError naming what is supported."""
    model_type = _get(config, 'model_type')
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f'export of {model_type} is not supported yet: supported are '
                             f'{", ".join(sorted(SUPPORTED_FAMILIES))} (LLaVA with a '
                             f'{"/".join(SUPPORTED_DECODERS)} decoder)')
    return SUPPORTED_FAMILIES[model_type]


def rope_parameters(text_config: Any) -> dict:
    """The decoder's RoPE settings (v5 `rope_parameters`; v4 `rope_theta` / `rope_scaling`)."""
    params = _get(text_config, 'rope_parameters')
    if isinstance(params, dict) and params:
        return dict(params)
    params = dict(_get(text_config, 'rope_scaling') or {})
    params.setdefault('rope_type', params.get('type', 'default'))
    params.setdefault('rope_theta', _get(text_config, 'rope_theta', 10000.0))
    return params


def export_config_for(config: Any, num_layers: int | None = None, opset: int = DEFAULT_OPSET,
                      image_size: tuple[int, int] | None = None) -> ExportConfig:
    """The ExportConfig of a VLM config (after pruning: pass the remaining `num_layers`)."""
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
                        num_image_tokens=num_image_tokens, decoder=shape, opset=opset)
