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
The embedded default VLM: a standard transformers LLaVA small enough to train on 2 CPU cores.

A SigLIP vision tower + projector + Llama decoder with a word-level tokenizer, trained from
scratch. Everything here produces ordinary Hugging Face objects, saved with `save_pretrained`, so
the rest of the project (GM-Skip, export, runtime) treats the default model exactly like a
downloaded LLaVA.
"""

from __future__ import annotations

from typing import Iterable

from ros2_gmskip.vlm.configs import DefaultModelConfig  # noqa: F401 - part of this API
from tokenizers import (
    AddedToken,
    decoders,
    models,
    pre_tokenizers,
    processors,
    Tokenizer,
    trainers,
)
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

SPECIAL_TOKENS = ('<pad>', '<s>', '</s>', '<unk>', '<image>', '<sep>')
# The prompt is plain text between the image and the answer; <sep> ends the user turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
    '{% endfor %}{% endfor %}{% if add_generation_prompt %}<sep>{% endif %}')


def build_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """
    Word-level tokenizer trained on `corpus` with the `tokenizers` library.

    Words carry a leading '▁' (Metaspace) and punctuation is split off, so decoding restores the
    exact text ('a red car, rainy night.'), and one word is one token: short decodes, fast
    decoding.
    """
    tok = Tokenizer(models.WordLevel(unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='always'),
        pre_tokenizers.Punctuation(behavior='isolated'),
    ])
    tok.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='always')
    trainer = trainers.WordLevelTrainer(
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS],
        min_frequency=1, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id('<s>')
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A $B',
                                                       special_tokens=[('<s>', bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token='<s>', eos_token='</s>', pad_token='<pad>',
        unk_token='<unk>', extra_special_tokens={'image_token': '<image>', 'sep_token': '<sep>'},
        padding_side='left', model_max_length=256)


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: DefaultModelConfig) -> LlavaProcessor:
    """
    Build the LLaVA processor: a PIL SigLIP image processor + the tokenizer.

    The image processor resizes bilinearly and normalizes with mean = std = 0.5.
    """
    image_processor = SiglipImageProcessorPil(
        size={'height': cfg.image_size, 'width': cfg.image_size}, resample=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=cfg.patch_size, vision_feature_select_strategy='full',
                          chat_template=CHAT_TEMPLATE, image_token='<image>')


def build_model(cfg: DefaultModelConfig,
                tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """Build a randomly initialised LlavaForConditionalGeneration of the configured size."""
    vision = SiglipVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=2 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size)
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True)
    config = LlavaConfig(
        vision_config=vision, text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
        vision_feature_select_strategy='full', vision_feature_layer=-1,
        projector_hidden_act='gelu', image_seq_length=cfg.num_image_tokens,
        tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 48
    return model
