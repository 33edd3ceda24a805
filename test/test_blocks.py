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

"""Block surgery on tiny random-weight models of every supported family (no downloads)."""

from __future__ import annotations

import pytest
from ros2_gmskip.errors import ModelLoadError, PlanError
from ros2_gmskip.vlm.blocks import (
    decoder_stack,
    family_of,
    remove_blocks,
    temporarily_removed,
    vision_stack,
)
import torch
import transformers as tf

torch.set_num_threads(1)

V = 128            # vocabulary; the last ids are the image / video / boundary tokens
IMAGE = 32         # image side, pixels; patch 8 -> 16 patches
TEXT = {'vocab_size': V, 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 6,
        'num_attention_heads': 4, 'num_key_value_heads': 2, 'max_position_embeddings': 256,
        'pad_token_id': 0, 'bos_token_id': 1, 'eos_token_id': 2}
VISION = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
          'num_attention_heads': 4, 'image_size': IMAGE, 'patch_size': 8}
QWEN_ROPE = {'rope_type': 'default', 'rope_theta': 10000.0, 'mrope_section': [2, 1, 1]}
QWEN_IDS = {'image_token_id': V - 1, 'video_token_id': V - 2, 'vision_start_token_id': V - 3,
            'vision_end_token_id': V - 4}


def build(kind: str) -> torch.nn.Module:
    """Build a tiny random model: 6 decoder blocks, 2 vision blocks, hidden 32."""
    torch.manual_seed(0)
    if kind == 'llava-clip':
        config = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**VISION),
                                text_config=tf.LlamaConfig(**TEXT), image_token_index=V - 1)
        return tf.LlavaForConditionalGeneration(config)
    if kind == 'llava-siglip':
        config = tf.LlavaConfig(vision_config=tf.SiglipVisionConfig(**VISION),
                                text_config=tf.LlamaConfig(**TEXT), image_token_index=V - 1,
                                vision_feature_layer=-1, vision_feature_select_strategy='full')
        return tf.LlavaForConditionalGeneration(config)
    if kind == 'llava_onevision':
        config = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(**VISION), text_config=tf.Qwen2Config(**TEXT),
            image_token_index=V - 1, video_token_index=V - 2, vision_feature_layer=-1,
            image_grid_pinpoints=[[IMAGE, IMAGE]])
        return tf.LlavaOnevisionForConditionalGeneration(config)
    if kind == 'idefics3':
        config = tf.Idefics3Config(vision_config=tf.Idefics3VisionConfig(**VISION),
                                   text_config=tf.LlamaConfig(**TEXT), image_token_id=V - 1,
                                   scale_factor=2)
        return tf.Idefics3ForConditionalGeneration(config)
    if kind == 'smolvlm':
        config = tf.SmolVLMConfig(vision_config=tf.SmolVLMVisionConfig(**VISION),
                                  text_config=tf.LlamaConfig(**TEXT), image_token_id=V - 1,
                                  scale_factor=2)
        return tf.SmolVLMForConditionalGeneration(config)
    if kind == 'qwen2_vl':
        config = tf.Qwen2VLConfig(
            vision_config={'depth': 2, 'embed_dim': 32, 'hidden_size': 32, 'num_heads': 4,
                           'mlp_ratio': 2, 'patch_size': 4, 'spatial_merge_size': 2,
                           'temporal_patch_size': 2},
            text_config=dict(TEXT, rope_parameters=QWEN_ROPE), **QWEN_IDS)
        return tf.Qwen2VLForConditionalGeneration(config)
    if kind == 'qwen2_5_vl':
        config = tf.Qwen2_5_VLConfig(
            vision_config={'depth': 2, 'hidden_size': 32, 'out_hidden_size': 32,
                           'intermediate_size': 64, 'num_heads': 4, 'patch_size': 4,
                           'spatial_merge_size': 2, 'temporal_patch_size': 2, 'window_size': 8,
                           'fullatt_block_indexes': [1]},
            text_config=dict(TEXT, rope_parameters=QWEN_ROPE), **QWEN_IDS)
        return tf.Qwen2_5_VLForConditionalGeneration(config)
    if kind == 'paligemma':
        config = tf.PaliGemmaConfig(vision_config=tf.SiglipVisionConfig(**VISION),
                                    text_config=tf.GemmaConfig(**TEXT, head_dim=8),
                                    image_token_index=V - 1, projection_dim=32, hidden_size=32)
        return tf.PaliGemmaForConditionalGeneration(config)
    if kind == 'gemma3':
        # sliding window 4 < prompt length, pattern 3: layers 2 and 5 are full attention
        text = tf.Gemma3TextConfig(**TEXT, head_dim=8, sliding_window=4, sliding_window_pattern=3)
        config = tf.Gemma3Config(vision_config=tf.SiglipVisionConfig(**VISION), text_config=text,
                                 mm_tokens_per_image=4, image_token_index=V - 1,
                                 boi_token_index=V - 3, eoi_token_index=V - 4)
        return tf.Gemma3ForConditionalGeneration(config)
    raise ValueError(kind)


def dummy_inputs(kind: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One image + 5 text tokens, with as many image tokens as the model makes features."""
    config = model.config
    image_token = getattr(config, 'image_token_id', None)
    if image_token is None:
        image_token = config.image_token_index
    g = torch.Generator().manual_seed(1)
    extra: dict[str, torch.Tensor] = {}
    if kind in ('llava-clip', 'llava-siglip', 'paligemma'):
        n_image = (IMAGE // 8) ** 2                          # 16 patches (CLIP's CLS dropped)
        pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=g)
    elif kind == 'gemma3':
        n_image = config.mm_tokens_per_image                 # 4x4 patches avg-pooled to 2x2
        pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=g)
    elif kind in ('idefics3', 'smolvlm'):
        n_image = (IMAGE // 8) ** 2 // config.scale_factor ** 2   # pixel shuffle: 16 -> 4
        pixels = torch.randn(1, 1, 3, IMAGE, IMAGE, generator=g)  # (B, images, C, H, W)
    elif kind == 'llava_onevision':
        pixels = torch.randn(1, 2, 3, IMAGE, IMAGE, generator=g)  # base + 1 anyres tile
        extra['image_sizes'] = torch.tensor([[IMAGE, IMAGE]])
        with torch.no_grad():   # anyres unpadding + newline tokens: ask the model for the count
            feats = model.model.get_image_features(pixels, extra['image_sizes']).pooler_output
        n_image = feats[0].shape[0]
    else:   # qwen2_vl, qwen2_5_vl: 16x16 image, patch 4 -> grid 1x4x4, merged 2x2 -> 4 tokens
        extra['image_grid_thw'] = torch.tensor([[1, 4, 4]])
        pixels = torch.randn(16, 3 * 2 * 4 * 4, generator=g)    # (patches, C * T * P * P)
        n_image = 4
    text = torch.randint(3, V - 8, (1, 5), generator=g)
    input_ids = torch.cat([text[:, :2], torch.full((1, n_image), image_token), text[:, 2:]], 1)
    if kind in ('qwen2_vl', 'qwen2_5_vl'):
        extra['mm_token_type_ids'] = (input_ids == image_token).int()   # for M-RoPE positions
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                pixel_values=pixels, **extra)


KINDS = ['llava-clip', 'llava-siglip', 'llava_onevision', 'idefics3', 'smolvlm', 'qwen2_vl',
         'qwen2_5_vl', 'paligemma', 'gemma3']
FAMILY = {'llava-clip': 'llava', 'llava-siglip': 'llava'}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize('kind', KINDS)
def test_remove_decoder_blocks(kind, tmp_path):
    model = build(kind).eval()
    inputs = dummy_inputs(kind, model)
    assert family_of(model) == FAMILY.get(kind, kind)
    stack = decoder_stack(model)
    assert stack.num_blocks == 6
    old_types = list(getattr(stack.config, 'layer_types', None) or [])
    survivors = [stack.layers[b] for b in (0, 2, 4, 5)]
    before = logits(model, inputs)

    # temporarily_removed: same result as the real removal, then everything back exactly
    with temporarily_removed(model, [3, 1]):
        assert decoder_stack(model).num_blocks == 4
        during = logits(model, inputs)
    restored = decoder_stack(model)
    assert restored.num_blocks == 6 and restored.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in restored.layers] == list(range(6))
    assert (getattr(restored.config, 'layer_types', None) or []) == old_types
    assert torch.equal(logits(model, inputs), before)

    assert remove_blocks(model, [1, 3]) is model
    stack = decoder_stack(model)
    assert list(stack.layers) == survivors                        # survivors, in order
    assert stack.config.num_hidden_layers == 4
    assert model.config.get_text_config(decoder=True).num_hidden_layers == 4
    if old_types:
        assert stack.config.layer_types == [old_types[b] for b in (0, 2, 4, 5)]
    for new_idx, layer in enumerate(stack.layers):
        assert layer.self_attn.layer_idx == new_idx
        assert getattr(layer, 'layer_idx', new_idx) == new_idx
    after = logits(model, inputs)
    assert after.shape == before.shape and torch.isfinite(after).all()
    assert torch.equal(after, during)

    # generation: KV cache (built from the edited config) agrees with the no-cache path
    n_prompt = inputs['input_ids'].shape[1]
    with torch.no_grad():
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=True)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert cached.shape[1] == n_prompt + 3
    assert torch.equal(cached, uncached)

    # a real smaller model: save + load gives the same logits and 4 blocks
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert decoder_stack(reloaded).num_blocks == 4
    assert torch.equal(logits(reloaded, inputs), after)


def test_remove_vision_blocks_llava():
    # LLaVA reads the CLIP features from hidden state -2 (the penultimate block's output): the
    # last vision block is dead weight, and removing it must not change anything.
    model = build('llava-clip').eval()
    assert model.config.vision_feature_layer == -2
    inputs = dummy_inputs('llava-clip', model)
    before = logits(model, inputs)
    with temporarily_removed(model, [1], stack='vision'):
        stack = vision_stack(model)
        assert stack.num_blocks == 1 and stack.config.num_hidden_layers == 1
        assert model.config.vision_feature_layer == -1
        assert torch.equal(logits(model, inputs), before)
    assert model.config.vision_feature_layer == -2 and vision_stack(model).num_blocks == 2
    remove_blocks(model, [0], stack='vision')
    assert model.config.vision_config.num_hidden_layers == 1
    assert model.config.vision_feature_layer == -2      # embeddings (hidden state 0) now
    assert not torch.equal(logits(model, inputs), before)
    assert decoder_stack(model).num_blocks == 6


def test_remove_vision_blocks_qwen2_5_vl():
    model = build('qwen2_5_vl').eval()
    inputs = dummy_inputs('qwen2_5_vl', model)
    remove_blocks(model, [0], stack='vision')
    assert model.config.vision_config.depth == 1
    assert model.config.vision_config.fullatt_block_indexes == [0]
    assert model.model.visual.fullatt_block_indexes == [0]
    assert torch.isfinite(logits(model, inputs)).all()


@pytest.mark.parametrize('indices, message', [
    ([6], 'out of range'),
    ([-1], 'negative'),
    ([2, 2], 'twice'),
    ([0, 1, 2, 3, 4, 5], 'cannot remove all 6'),
    (['1'], 'not an integer'),
    ([1.0], 'not an integer'),
])
def test_invalid_indices(indices, message):
    model = build('llava-siglip')
    with pytest.raises(PlanError, match=message):
        remove_blocks(model, indices)
    assert decoder_stack(model).num_blocks == 6
    with pytest.raises(PlanError, match='unknown block stack'):
        remove_blocks(model, [1], stack='encoder')


def test_unsupported_family():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**dict(TEXT, num_hidden_layers=2)))
    with pytest.raises(ModelLoadError, match="unsupported model type 'llama'"):
        family_of(model)


def test_temporarily_removed_restores_on_error():
    model = build('gemma3')
    with pytest.raises(RuntimeError):
        with temporarily_removed(model, [2]):
            raise RuntimeError('boom')
    stack = decoder_stack(model)
    assert stack.num_blocks == 6 and stack.config.layer_types.count('full_attention') == 2
    with temporarily_removed(model, torch.tensor([2, 5])):    # tensor / numpy integers work
        assert decoder_stack(model).config.layer_types.count('full_attention') == 0


def test_heterogeneous_config_rekeyed():
    # transformers v5 per-layer overrides follow their blocks (config-level check: no supported
    # family builds heterogeneous layers yet)
    from ros2_gmskip.vlm.blocks import _update_config
    config = tf.LlamaConfig(**dict(TEXT, num_hidden_layers=4),
                            per_layer_config={1: {'intermediate_size': 48},
                                              3: {'intermediate_size': 80}})
    _update_config(config, [0, 3], 4, setattr)
    assert config.num_hidden_layers == 2
    assert [c.intermediate_size for c in config.per_layer_config] == [64, 80]
