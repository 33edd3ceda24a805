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
Block surgery: find a VLM's Transformer block stacks and physically remove blocks from them.

    from ros2_gmskip.vlm.blocks import decoder_stack, remove_blocks, temporarily_removed
    decoder_stack(model).num_blocks                     # e.g. 24
    with temporarily_removed(model, (21, 22, 23)):      # evaluate a candidate, no deep copy
        logits = model(**batch).logits
    remove_blocks(model, (21, 22, 23))                  # a real, smaller model: save_pretrained it

Removing blocks gives a model that transformers itself would have built from the edited config:

- the stack's `nn.ModuleList` is replaced by a new one holding the survivors, in order (the state
  dict keys renumber with it: `layers.0 .. layers.n-1`);
- every config that describes the stack is updated: `num_hidden_layers` (Qwen's vision `depth`
  through its attribute map), per-layer lists filtered to the survivors (`layer_types`: Gemma 3's
  sliding/full pattern, Qwen2's sliding windows; `mlp_layer_types`, `no_rope_layers`), "the first
  k layers" counts re-counted (`max_window_layers`), block index lists renumbered (Qwen2.5-VL's
  vision `fullatt_block_indexes`), and heterogeneous `per_layer_config` overrides re-keyed;
- every integer `layer_idx` inside a surviving block (the attention's KV-cache slot) is renumbered
  0..n-1. In transformers v5 `DynamicCache(config=...)` sizes itself from the text config's
  `layer_types` / `num_hidden_layers`, so the cache and the layers agree again;
- for the vision stack, `vision_feature_layer` (LLaVA family: a hidden-state index, -2 = "output of
  the penultimate block") is remapped so the projector reads the same computation as before; a
  removed block's output is the previous survivor's output.

Indices always refer to the stack as it is now (remove twice and the second call uses the already
renumbered blocks). Invalid indices raise `PlanError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
import logging
import operator
from typing import Any, Callable, Iterable, Iterator

from ros2_gmskip.errors import ModelLoadError, PlanError
from ros2_gmskip.vlm.families import family_spec, resolve as _resolve
import torch
from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

# config.model_type -> the family name used in plans and logs: the model types `vlm.families`
# describes. 'gmskip_llava' is the project's default model (a LlavaForConditionalGeneration),
# handled exactly like 'llava'.
STACKS = ('decoder', 'vision')

# Config attributes holding one entry per block: filtered to the survivors.
_PER_BLOCK_LISTS = ('layer_types', 'mlp_layer_types', 'no_rope_layers')
# "The first k blocks are special" counts (Qwen2 family): k -> survivors among the first k.
_PREFIX_COUNTS = ('max_window_layers',)
# Lists of block indices (Qwen2.5-VL vision: full-attention blocks): renumbered, removed dropped.
_INDEX_LISTS = ('fullatt_block_indexes',)
# Where the vision encoder keeps its blocks, relative to the vision tower module.
_VISION_LAYER_PATHS = ('vision_model.encoder.layers', 'encoder.layers', 'blocks', 'layers')


@dataclass
class BlockStack:
    """One stack of Transformer blocks and the configs that describe it."""

    name: str                       # 'decoder' | 'vision'
    layers: torch.nn.ModuleList     # the blocks, in order
    config: PretrainedConfig        # sub-config whose num_hidden_layers / layer_types describe it
    owner: torch.nn.Module          # module holding `layers` as attribute `attr`
    attr: str
    module: torch.nn.Module         # the stack's model (text model / vision tower)
    extra_configs: tuple[PretrainedConfig, ...] = ()   # other config objects describing it

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    @property
    def configs(self) -> tuple[PretrainedConfig, ...]:
        return (self.config, *self.extra_configs)


def family_of(model: Any) -> str:
    """Return the model's model_type ('llava', 'qwen2_vl', ...); ModelLoadError if unsupported."""
    family_spec(model)                      # one check of the supported types: vlm/families.py
    return model.config.model_type


def _unique_configs(configs: Iterable[Any]) -> tuple[PretrainedConfig, ...]:
    seen: dict[int, PretrainedConfig] = {}
    for config in configs:
        if isinstance(config, PretrainedConfig) and id(config) not in seen:
            seen[id(config)] = config
    return tuple(seen.values())


def decoder_stack(model: Any) -> BlockStack:
    """
    Return the language model's decoder blocks.

    In transformers v5 `get_decoder()` returns the base text model (LlamaModel, Qwen2Model,
    Qwen2VLTextModel, GemmaModel, Gemma3TextModel ...) whose `.layers` is the block list, for every
    supported family; the fallbacks cover wrappers where it does not.
    """
    family = family_of(model)
    candidates = []
    if hasattr(model, 'get_decoder'):
        candidates.append(model.get_decoder())
    for path in ('model.language_model', 'language_model', 'model.text_model', 'text_model',
                 'model'):
        candidates.append(_resolve(model, path))
    for text_model in candidates:
        layers = getattr(text_model, 'layers', None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            config = text_model.config
            top = model.config.get_text_config(decoder=True)
            return BlockStack(name='decoder', layers=layers, config=config, owner=text_model,
                              attr='layers', module=text_model,
                              extra_configs=_unique_configs([top]) if top is not config else ())
    raise ModelLoadError(f'cannot find the decoder blocks of this {family} model '
                         f'({type(model).__name__}): no `.layers` list on its language model')


def vision_stack(model: Any) -> BlockStack:
    """Return the vision tower's blocks (CLIP/SigLIP/Idefics3 `encoder.layers`, Qwen `blocks`)."""
    family = family_of(model)
    towers = []
    if hasattr(model, 'get_encoder'):
        with contextlib.suppress(TypeError, ValueError):
            towers.append(model.get_encoder(modality='image'))
    for path in ('model.vision_tower', 'vision_tower', 'model.visual', 'visual',
                 'model.vision_model', 'vision_model'):
        towers.append(_resolve(model, path))
    for tower in towers:
        if tower is None or tower is model:
            continue
        for path in _VISION_LAYER_PATHS:
            layers = _resolve(tower, path)
            if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
                owner_path, _, attr = path.rpartition('.')
                owner = _resolve(tower, owner_path) if owner_path else tower
                top = getattr(model.config, 'vision_config', None)
                return BlockStack(name='vision', layers=layers, config=tower.config, owner=owner,
                                  attr=attr, module=tower,
                                  extra_configs=_unique_configs([top]) if top is not tower.config
                                  else ())
    raise ModelLoadError(f'cannot find the vision blocks of this {family} model '
                         f'({type(model).__name__})')


def get_stack(model: Any, stack: str = 'decoder') -> BlockStack:
    if stack == 'decoder':
        return decoder_stack(model)
    if stack == 'vision':
        return vision_stack(model)
    raise PlanError(f'unknown block stack {stack!r}: expected one of {", ".join(STACKS)}')


def validate_indices(indices: Iterable[int], num_blocks: int, stack: str = 'decoder') -> list[int]:
    """Sorted block indices, or PlanError naming the bad one (negative, too big, twice, all)."""
    checked: list[int] = []
    for index in indices:
        try:
            if isinstance(index, bool):
                raise TypeError
            index = operator.index(index)        # int, numpy / torch integer scalars
        except TypeError:
            raise PlanError(f'block index {index!r} is not an integer: {stack} blocks are '
                            f'numbered 0..{num_blocks - 1}') from None
        if index < 0:
            raise PlanError(f'block index {index} is negative: {stack} blocks are numbered '
                            f'0..{num_blocks - 1}')
        if index >= num_blocks:
            raise PlanError(f'block index {index} out of range: the {stack} has {num_blocks} '
                            f'blocks (0..{num_blocks - 1})')
        if index in checked:
            raise PlanError(f'block {index} listed twice in the blocks to remove')
        checked.append(index)
    if num_blocks and len(checked) == num_blocks:
        raise PlanError(f'cannot remove all {num_blocks} {stack} blocks: keep at least one')
    return sorted(checked)


def _remap_hidden_state_index(index: int, keep: list[int], num_blocks: int) -> int:
    """Hidden-state index k (output of the first k blocks; negative from the end) after removal."""
    k = index if index >= 0 else num_blocks + 1 + index
    new_k = sum(1 for b in keep if b < k)     # a removed block's output = last survivor's output
    return new_k if index >= 0 else new_k - (len(keep) + 1)


def _remove(model: Any, indices: Iterable[int], stack: str) -> Callable[[], None]:
    """Remove blocks in place; return a function that puts everything back exactly."""
    blocks = get_stack(model, stack)
    num_blocks = blocks.num_blocks
    removed = validate_indices(indices, num_blocks, stack)
    if not removed:
        return lambda: None
    keep = [b for b in range(num_blocks) if b not in removed]
    undo: list[Callable[[], None]] = []

    def set_attr(obj: Any, name: str, value: Any) -> None:
        """setattr, remembering the old value (or its absence) for undo."""
        if name in vars(obj):
            old = vars(obj)[name]
            undo.append(lambda: setattr(obj, name, old))
        else:
            undo.append(lambda: vars(obj).pop(name, None))
        setattr(obj, name, value)

    def restore() -> None:
        for step in reversed(undo):
            step()

    try:
        # 1. The ModuleList: a new list of the survivors; the original object stays untouched.
        old_layers = blocks.layers
        setattr(blocks.owner, blocks.attr, torch.nn.ModuleList([old_layers[b] for b in keep]))
        undo.append(lambda: setattr(blocks.owner, blocks.attr, old_layers))

        # 2. layer_idx inside each survivor (attention, decoder layer): the KV-cache slot.
        for new_index, old_index in enumerate(keep):
            for name, sub in old_layers[old_index].named_modules():
                layer_idx = vars(sub).get('layer_idx')
                if isinstance(layer_idx, int) and not isinstance(layer_idx, bool):
                    if layer_idx != old_index:
                        logger.warning('%s block %d: %s.layer_idx is %d, expected %d; renumbering',
                                       stack, old_index, name or 'block', layer_idx, old_index)
                    set_attr(sub, 'layer_idx', new_index)

        # 3. Configs (and module attributes copied from them at init).
        for config in blocks.configs:
            _update_config(config, keep, num_blocks, set_attr)
        for name in _INDEX_LISTS:
            value = vars(blocks.module).get(name)
            if isinstance(value, (list, tuple)):
                set_attr(blocks.module, name, [keep.index(b) for b in value if b in keep])
        if stack == 'decoder' and isinstance(vars(blocks.module).get('has_sliding_layers'), bool):
            set_attr(blocks.module, 'has_sliding_layers',
                     'sliding_attention' in (getattr(blocks.config, 'layer_types', None) or ()))
        if stack == 'vision':
            tops = [model.config, getattr(model.config, 'text_config', None)]
            for config in _unique_configs(tops):
                layer = vars(config).get('vision_feature_layer')
                if isinstance(layer, int) and not isinstance(layer, bool):
                    set_attr(config, 'vision_feature_layer',
                             _remap_hidden_state_index(layer, keep, num_blocks))
                elif isinstance(layer, (list, tuple)):
                    set_attr(config, 'vision_feature_layer',
                             [_remap_hidden_state_index(k, keep, num_blocks) for k in layer])
    except BaseException:
        restore()       # never leave a half-edited model behind
        raise

    logger.debug('removed %s blocks %s (%d -> %d)', stack, removed, num_blocks, len(keep))
    return restore


def _update_config(config: PretrainedConfig, keep: list[int], num_blocks: int,
                   set_attr: Callable[[Any, str, Any], None]) -> None:
    """Describe the survivors `keep` (old indices) in `config`, in place."""
    heterogeneous = bool(getattr(config, 'is_heterogeneous', False))
    spec = vars(config).get('_heterogeneity_spec') if heterogeneous else None
    # num_hidden_layers may be an attribute_map alias (Qwen vision: depth); set the real name.
    count_name = config.attribute_map.get('num_hidden_layers', 'num_hidden_layers')
    if getattr(config, count_name, None) != num_blocks:
        logger.warning('%s.%s is %r but the stack has %d blocks; setting it to %d',
                       type(config).__name__, count_name, getattr(config, count_name, None),
                       num_blocks, len(keep))
    set_attr(config, count_name, len(keep))
    for name in _PER_BLOCK_LISTS:
        value = vars(config).get(name)
        if isinstance(value, (list, tuple)) and len(value) == num_blocks:
            set_attr(config, name, [value[b] for b in keep])
    for name in _PREFIX_COUNTS:
        value = vars(config).get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            set_attr(config, name, sum(1 for b in keep if b < value))
    for name in _INDEX_LISTS:
        value = vars(config).get(name)
        if isinstance(value, (list, tuple)):
            set_attr(config, name, [keep.index(b) for b in value if b in keep])
    if spec is not None:
        # Re-key the per-layer overrides to the survivors' new indices (transformers v5
        # heterogeneous configs); the setter validates them against the new layer count.
        overrides = {new: copy.deepcopy(spec.per_layer_overrides[old])
                     for new, old in enumerate(keep) if old in spec.per_layer_overrides}
        set_attr(config, '_heterogeneity_spec', spec)     # remembered for undo
        vars(config).pop('_heterogeneity_spec', None)
        config.per_layer_config = overrides or None


def remove_blocks(model: Any, indices: Iterable[int], stack: str = 'decoder') -> Any:
    """
    Physically remove blocks `indices` of `stack` ('decoder' | 'vision'), in place.

    Returns `model` (the same object, now smaller).
    """
    _remove(model, indices, stack)
    return model


@contextlib.contextmanager
def temporarily_removed(model: Any, indices: Iterable[int],
                        stack: str = 'decoder') -> Iterator[Any]:
    """
    Remove blocks for the duration of the `with`; restore the original ModuleList and configs.

    The restored model is the same objects as before (same layers, same config values), so the
    search can evaluate a candidate without copying the model.
    """
    restore = _remove(model, indices, stack)
    try:
        yield model
    finally:
        restore()
