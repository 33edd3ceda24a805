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
What each supported VLM family needs, written down once.

The torch backend runs every family through the same four steps, and an exporter has to rebuild
exactly those steps as graphs, so each difference between families is a field here rather than a
branch in the backend:

    inputs  = build_inputs(processor, [image], prompt)          # processor output (pt)
    vision  = image_features(model, inputs)                     # vision tower + projector
    pos     = position_ids(model, inputs)                       # (1, T) or M-RoPE (3, 1, T)
    out     = model(**text_inputs(inputs), position_ids=pos,    # merge + prefill
                    mm_encoder_outputs={'image': vision}, use_cache=True)
    decode  : model(input_ids=last, position_ids=decode_positions(...), past_key_values=...)

Fields (`Family`):
- `vision_inputs`: processor outputs the vision side reads (`pixel_values`, Idefics3's
  `pixel_attention_mask`, Qwen's `image_grid_thw`, OneVision's `image_sizes`);
- `text_inputs` are the rest: `input_ids`, `attention_mask`, Gemma 3's / PaliGemma's
  `token_type_ids` (1 = image: Gemma 3 lets image tokens see each other; PaliGemma's prefix is
  bidirectional), Qwen's `mm_token_type_ids` (which tokens are image, for M-RoPE);
- `positions`: 'linear' (0..T-1, plus `position_offset`: PaliGemma counts from 1) or 'mrope'
  (Qwen: three position rows for time, height, width over the image, then text continuing from
  the largest; a decode step's position is its index plus the prompt's `rope_delta`);
- `image_layout`: how the image tokens sit in the prompt ('fixed': one run of N tokens per image;
  'anyres': base tile plus resolution-dependent tiles with row newlines; 'tiles': Idefics3's
  row/col-tagged tiles plus a global image; 'grid': Qwen's merged patch grid, N = t*h*w / m^2);
- `language_model` / `vision_tower`: attribute paths of the two stacks' owners;
- `preprocess`: the image processor's geometry, the part torch-free preprocessing must copy
  ('resize', 'shortest_edge_crop', 'anyres', 'split', 'smart_resize');
- `nested_images`: the processor reads a flat image list as N images of ONE sample (Idefics3,
  SmolVLM, Gemma 3), so a batch passes one list per sample;
- `token_skip`: FastV / visual KV removal (tokenskip/) know this family's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ros2_gmskip.errors import ModelLoadError
import torch

# Processor outputs that feed the vision side (never the decoder directly).
VISION_KEYS = frozenset({'pixel_values', 'pixel_attention_mask', 'image_grid_thw',
                         'image_sizes', 'batch_num_images'})
# Processor outputs no forward takes (PaliGemma's processor returns labels for training).
DROPPED_KEYS = frozenset({'labels'})


@dataclass(frozen=True)
class Family:
    """One VLM family's inputs, positions, prompt layout and module paths."""

    name: str
    vision_inputs: tuple[str, ...]
    text_extras: tuple[str, ...] = ()     # text-side inputs besides input_ids / attention_mask
    positions: str = 'linear'             # 'linear' | 'mrope'
    position_offset: int = 0              # PaliGemma: positions start at 1
    image_layout: str = 'fixed'           # 'fixed' | 'anyres' | 'tiles' | 'grid'
    language_model: str = 'model.language_model'
    vision_tower: str = 'model.vision_tower'
    preprocess: str = 'resize'
    nested_images: bool = False
    token_skip: bool = False


_LLAVA = Family('llava', ('pixel_values',), token_skip=True)
FAMILIES: dict[str, Family] = {
    'gmskip_llava': _LLAVA,
    'llava': _LLAVA,
    'llava_onevision': Family('llava_onevision', ('pixel_values', 'image_sizes',
                                                  'batch_num_images'),
                              image_layout='anyres', preprocess='anyres'),
    'idefics3': Family('idefics3', ('pixel_values', 'pixel_attention_mask'),
                       image_layout='tiles', language_model='model.text_model',
                       vision_tower='model.vision_model', preprocess='split',
                       nested_images=True),
    'smolvlm': Family('smolvlm', ('pixel_values', 'pixel_attention_mask'),
                      image_layout='tiles', language_model='model.text_model',
                      vision_tower='model.vision_model', preprocess='split',
                      nested_images=True),
    'qwen2_vl': Family('qwen2_vl', ('pixel_values', 'image_grid_thw'), ('mm_token_type_ids',),
                       positions='mrope', image_layout='grid', vision_tower='model.visual',
                       preprocess='smart_resize'),
    'qwen2_5_vl': Family('qwen2_5_vl', ('pixel_values', 'image_grid_thw'),
                         ('mm_token_type_ids',), positions='mrope', image_layout='grid',
                         vision_tower='model.visual', preprocess='smart_resize'),
    'paligemma': Family('paligemma', ('pixel_values',), ('token_type_ids',),
                        position_offset=1),
    'gemma3': Family('gemma3', ('pixel_values',), ('token_type_ids',), nested_images=True),
}


def family_spec(model_or_config: Any) -> Family:
    """Return the `Family` of a model (or its config); ModelLoadError for an unsupported one."""
    config = getattr(model_or_config, 'config', model_or_config)
    model_type = getattr(config, 'model_type', None)
    if model_type not in FAMILIES:
        raise ModelLoadError(f'unsupported model type {model_type!r}: supported are '
                             f'{", ".join(sorted(FAMILIES))}')
    return FAMILIES[model_type]


def resolve(module: Any, path: str) -> Any:
    """Return the attribute at dotted `path` under `module`, or None."""
    for part in path.split('.'):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def split_inputs(inputs: dict) -> tuple[dict, dict]:
    """Return (vision inputs, text inputs) of a processor output."""
    vision = {k: v for k, v in inputs.items() if k in VISION_KEYS}
    text = {k: v for k, v in inputs.items() if k not in VISION_KEYS and k not in DROPPED_KEYS}
    return vision, text


def image_features(model: Any, inputs: dict) -> Any:
    """
    Run the vision tower and projector: the `mm_encoder_outputs['image']` a forward accepts.

    Returns the model's own output record (its `pooler_output` holds the projected image
    tokens), so a forward given it merges them exactly as it would merge its own.
    """
    vision, _ = split_inputs(inputs)
    return model.model.get_image_features(**vision, return_dict=True)


def merged_image_tokens(features: Any) -> torch.Tensor:
    """Return the projected image tokens (N, C) of `image_features`, in prompt order."""
    pooled = features.pooler_output
    if isinstance(pooled, (list, tuple)):
        return torch.cat([p.reshape(-1, p.shape[-1]) for p in pooled], dim=0)
    return pooled.reshape(-1, pooled.shape[-1])


def position_ids(model: Any, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Return the prompt's positions and the rope delta of each row.

    'linear': (B, T) from the attention mask (left padding gets position 0), delta 0.
    'mrope': (3, B, T) from Qwen's `get_rope_index`; delta (B, 1) = largest position + 1 - T,
    so decode step k (0-based, after a prompt of T) sits at position T + k + delta on all rows.
    """
    family = family_spec(model)
    mask = inputs.get('attention_mask')
    ids = inputs['input_ids']
    if mask is None:
        mask = torch.ones_like(ids)
    if family.positions == 'mrope':
        positions, delta = model.model.get_rope_index(
            ids, inputs['mm_token_type_ids'], image_grid_thw=inputs.get('image_grid_thw'),
            attention_mask=mask)
        return positions, delta
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0) + family.position_offset
    return positions, torch.zeros(ids.shape[0], 1, dtype=torch.long, device=ids.device)


def decode_positions(model: Any, step_index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """
    Return the position ids of one decode step.

    `step_index` (B, 1) is the token's index in its row without padding (prompt length + k);
    the result is (B, 1), or (3, B, 1) for M-RoPE (the same position on every row).
    """
    family = family_spec(model)
    position = step_index + delta + family.position_offset
    if family.positions == 'mrope':
        return position[None].expand(3, -1, -1)
    return position


def language_model(model: Any) -> torch.nn.Module:
    """Return the decoder's base model (the module holding `.layers`)."""
    found = resolve(model, family_spec(model).language_model)
    if found is None:
        raise ModelLoadError(f'cannot find the language model of {type(model).__name__} at '
                             f'{family_spec(model).language_model!r}')
    return found
