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
Build tiny random-weight checkpoints of every supported VLM family, offline.

    from ros2_gmskip.vlm.tiny_families import save_tiny
    save_tiny('qwen2_5_vl', Path('/tmp/tiny-qwen'))   # config.json + safetensors + processor

Each checkpoint is the family's real model class with its real processor class (image processor,
tokenizer with the family's special tokens and a chat template of the family's shape), saved with
`save_pretrained`, so it goes through exactly the loading, prompting and merging code a downloaded
checkpoint goes through. Sizes are a few thousand parameters per block: tests and benchmarks of
every step (load, evaluate, calibrate, describe) run in seconds on a CPU. The weights are random,
so the text is noise; what the tests compare is the same noise from two code paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.vlm.processors import image_only
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, Tokenizer
import torch
from transformers import PreTrainedTokenizerFast

TEXT = {'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 4,
        'num_attention_heads': 2, 'num_key_value_heads': 1, 'max_position_embeddings': 512}
VISION_LAYERS = 3
INIT_STD = 0.2
WORDS = ('a car truck bus pedestrian cyclist traffic light stop sign cone red green yellow white '
         'black blue grey on the left right ahead close far clear rainy foggy day dusk night '
         'road , . : ? user assistant system you are helpful describe scene')

# A generic chat template of the usual shape: one user turn, image placeholder then text.
TEMPLATE = ('{{ bos }}{% for m in messages %}{{ start }}{{ m["role"] }}{{ sep }}'
            '{% for c in m["content"] %}{% if c["type"] == "image" %}{{ image }}'
            '{% else %}{{ c["text"] }}{% endif %}{% endfor %}{{ end }}{% endfor %}'
            '{% if add_generation_prompt %}{{ start }}assistant{{ sep }}{% endif %}')


def _template(bos: str = '', start: str = '', sep: str = ' ', image: str = '<image>',
              end: str = '') -> str:
    """Return the generic template with the family's markers as literal text."""
    text = TEMPLATE
    for name, value in (('bos', bos), ('start', start), ('sep', sep), ('image', image),
                        ('end', end)):
        text = text.replace('{{ ' + name + ' }}', value)
    return text


def build_tokenizer(special: dict[str, str], extra: tuple[str, ...] = (),
                    pad: str = '<pad>', bos: str | None = '<s>', eos: str = '</s>',
                    add_bos: bool = True) -> PreTrainedTokenizerFast:
    """
    Build a word-level tokenizer holding the family's special tokens.

    `special` maps attribute names the processor reads (image_token, boi_token, ...) to tokens;
    `extra` are further special tokens the prompt layout uses (row/col markers, turn markers).
    """
    base = [pad, eos, '<unk>'] + ([bos] if bos else [])
    tokens = list(dict.fromkeys(base + list(special.values()) + list(extra)))
    vocab = {t: i for i, t in enumerate(tokens)}
    for word in sorted(set(WORDS.split() + DEFAULT_PROMPT.replace('?', ' ?').split())):
        vocab.setdefault('▁' + word, len(vocab))
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='never'),
        pre_tokenizers.Punctuation(behavior='isolated'),
    ])
    tok.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='never')
    if bos and add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f'{bos} $A', pair=f'{bos} $A $B', special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token='<unk>',
        extra_special_tokens=special, padding_side='left', model_max_length=512)


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {'vocab_size': len(tokenizer), 'bos_token_id': tokenizer.bos_token_id,
            'eos_token_id': tokenizer.eos_token_id, 'pad_token_id': tokenizer.pad_token_id}


def _model(model_class: type, config) -> torch.nn.Module:
    """
    Build `model_class(config)` with wider random weights than the default init.

    At the usual std 0.02 a tiny decoder barely sees the image, so every image gets the same
    text and the tests could not tell a vision-side change from none.
    """
    for sub in (config, getattr(config, 'text_config', None),
                getattr(config, 'vision_config', None)):
        if sub is not None:
            sub.initializer_range = INIT_STD
    model = model_class(config)
    with torch.no_grad():       # Gemma 3 starts its image projection at zero: no image at all
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, INIT_STD)
    return model


def _finish(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False
    return model


def _siglip(image_size: int, patch_size: int, **kw):
    from transformers import SiglipVisionConfig
    return SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                              num_hidden_layers=VISION_LAYERS, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size, **kw)


def llava(shortest_edge: bool = True):
    """
    Build LLaVA-1.5 in miniature: CLIP tower, shortest-edge resize + centre crop, Llama decoder.

    The real one reads the penultimate CLIP layer and drops the CLS token ('default').
    """
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tokenizer = build_tokenizer({'image_token': '<image>'})
    size, patch = 32, 8
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                              num_hidden_layers=VISION_LAYERS, num_attention_heads=2,
                              image_size=size, patch_size=patch, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**TEXT, **_ids(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
                         vision_feature_select_strategy='default', vision_feature_layer=-2,
                         image_seq_length=(size // patch) ** 2)
    resize = ({'shortest_edge': size} if shortest_edge else {'height': size, 'width': size})
    image_processor = CLIPImageProcessorPil(size=resize, crop_size={'height': size, 'width': size},
                                            do_center_crop=shortest_edge)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch, vision_feature_select_strategy='default',
                               num_additional_image_tokens=1,
                               chat_template=_template(start='', sep=': ', end='\n'))
    return _finish(_model(LlavaForConditionalGeneration, config), tokenizer), processor


def llava_onevision():
    """Build LLaVA-OneVision in miniature: SigLIP tower, anyres tiles, Qwen2 decoder."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor,
                              Qwen2Config)
    tokenizer = build_tokenizer({'image_token': '<image>', 'video_token': '<video>'},
                                extra=('<|im_start|>', '<|im_end|>'), bos=None)
    size, patch = 16, 8
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]
    config = LlavaOnevisionConfig(
        vision_config=_siglip(size, patch, vision_use_head=False),
        text_config=Qwen2Config(**TEXT, **_ids(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
        video_token_index=tokenizer.convert_tokens_to_ids('<video>'),
        image_grid_pinpoints=pinpoints, vision_aspect_ratio='anyres_max_9')
    image_processor = LlavaOnevisionImageProcessorPil(
        size={'height': size, 'width': size}, image_grid_pinpoints=pinpoints)
    processor = image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer,
        num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy='full',
        vision_aspect_ratio='anyres_max_9',
        chat_template=_template(start='<|im_start|>', sep='\n', end='<|im_end|>\n'))
    return _finish(_model(LlavaOnevisionForConditionalGeneration, config), tokenizer), processor


def _idefics3_like(smolvlm: bool):
    from transformers import LlamaConfig
    if smolvlm:
        from transformers import (SmolVLMConfig as Config,
                                  SmolVLMForConditionalGeneration as Model,
                                  SmolVLMImageProcessorPil as ImageProcessor,
                                  SmolVLMProcessor as Processor, SmolVLMVisionConfig as Vision)
    else:
        from transformers import (Idefics3Config as Config,
                                  Idefics3ForConditionalGeneration as Model,
                                  Idefics3ImageProcessorPil as ImageProcessor,
                                  Idefics3Processor as Processor, Idefics3VisionConfig as Vision)
    grid = tuple(f'<row_{i + 1}_col_{j + 1}>' for i in range(6) for j in range(6))
    tokenizer = build_tokenizer(
        {'image_token': '<image>', 'fake_image_token': '<fake_token_around_image>',
         'global_image_token': '<global-img>', 'end_of_utterance_token': '<end_of_utterance>'},
        extra=grid, bos='<|im_start|>', eos='<end_of_utterance>')
    size, patch, scale = 16, 4, 2
    vision = Vision(hidden_size=32, intermediate_size=64, num_hidden_layers=VISION_LAYERS,
                    num_attention_heads=2, image_size=size, patch_size=patch)
    config = Config(vision_config=vision, text_config=LlamaConfig(**TEXT, **_ids(tokenizer)),
                    image_token_id=tokenizer.convert_tokens_to_ids('<image>'), scale_factor=scale)
    image_processor = ImageProcessor(size={'longest_edge': 2 * size},
                                     max_image_size={'longest_edge': size},
                                     do_image_splitting=True)
    processor = image_only(Processor)(
        image_processor=image_processor, tokenizer=tokenizer,
        image_seq_len=(size // patch) ** 2 // scale ** 2,
        chat_template=_template(start='<|im_start|>', sep=':', end='<end_of_utterance>\n'))
    return _finish(_model(Model, config), tokenizer), processor


def idefics3():
    """Build Idefics3 in miniature: SigLIP-like tower, pixel shuffle, image splitting."""
    return _idefics3_like(smolvlm=False)


def smolvlm():
    """Build SmolVLM in miniature (Idefics3's architecture under its own classes)."""
    return _idefics3_like(smolvlm=True)


def _qwen(v2_5: bool):
    if v2_5:
        from transformers import (Qwen2_5_VLConfig as Config,
                                  Qwen2_5_VLForConditionalGeneration as Model,
                                  Qwen2_5_VLProcessor as Processor,
                                  Qwen2_5_VLTextConfig as Text, Qwen2_5_VLVisionConfig as Vision)
    else:
        from transformers import (Qwen2VLConfig as Config,
                                  Qwen2VLForConditionalGeneration as Model,
                                  Qwen2VLProcessor as Processor, Qwen2VLTextConfig as Text,
                                  Qwen2VLVisionConfig as Vision)
    from transformers import Qwen2VLImageProcessorPil
    marks = {'image_token': '<|image_pad|>', 'video_token': '<|video_pad|>',
             'vision_start_token': '<|vision_start|>', 'vision_end_token': '<|vision_end|>'}
    tokenizer = build_tokenizer(marks, extra=('<|im_start|>',), eos='<|im_end|>', bos=None)
    patch, merge = 4, 2
    if v2_5:
        vision = Vision(depth=VISION_LAYERS + 1, hidden_size=32, intermediate_size=64,
                        num_heads=2, patch_size=patch, spatial_merge_size=merge,
                        out_hidden_size=TEXT['hidden_size'], window_size=16,
                        fullatt_block_indexes=[1, 3])
    else:
        vision = Vision(depth=VISION_LAYERS, embed_dim=32, hidden_size=TEXT['hidden_size'],
                        num_heads=2, mlp_ratio=2, patch_size=patch, spatial_merge_size=merge)
    head_dim = TEXT['hidden_size'] // TEXT['num_attention_heads']
    text = Text(**TEXT, **_ids(tokenizer),
                rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0,
                                 'mrope_section': [2, 3, 3] if head_dim == 16 else None})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ('image_token_id', '<|image_pad|>'), ('video_token_id', '<|video_pad|>'),
        ('vision_start_token_id', '<|vision_start|>'), ('vision_end_token_id', '<|vision_end|>'))}
    config = Config(text_config=text, vision_config=vision, **ids)
    factor = patch * merge
    image_processor = Qwen2VLImageProcessorPil(
        size={'shortest_edge': 4 * factor * factor, 'longest_edge': 16 * factor * factor},
        patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = image_only(Processor)(
        image_processor=image_processor, tokenizer=tokenizer,
        chat_template=_template(start='<|im_start|>', sep='\n', end='<|im_end|>\n',
                                image='<|vision_start|><|image_pad|><|vision_end|>'))
    return _finish(_model(Model, config), tokenizer), processor


def qwen2_vl():
    """Build Qwen2-VL in miniature: 2x2-merged patches, M-RoPE decoder."""
    return _qwen(v2_5=False)


def qwen2_5_vl():
    """Build Qwen2.5-VL in miniature: windowed vision attention, M-RoPE decoder."""
    return _qwen(v2_5=True)


def paligemma():
    """Build PaliGemma in miniature: SigLIP tower, Gemma decoder, prefix-LM attention."""
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipImageProcessorPil)
    tokenizer = build_tokenizer({'image_token': '<image>'}, bos='<bos>', eos='<eos>',
                                add_bos=False)
    size, patch = 16, 4
    text = GemmaConfig(**{**TEXT, 'num_key_value_heads': 1}, head_dim=16, **_ids(tokenizer))
    config = PaliGemmaConfig(vision_config=_siglip(size, patch, projection_dim=32),
                             text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids('<image>'),
                             projection_dim=32, hidden_size=TEXT['hidden_size'])
    config.vision_config.projection_dim = TEXT['hidden_size']
    image_processor = SiglipImageProcessorPil(size={'height': size, 'width': size},
                                              image_seq_length=(size // patch) ** 2)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return _finish(_model(PaliGemmaForConditionalGeneration, config), tokenizer), processor


def gemma3():
    """Build Gemma 3 in miniature: SigLIP tower, pooled image tokens, sliding/global layers."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration,
                              Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig)
    tokenizer = build_tokenizer(
        {'image_token': '<image_soft_token>', 'boi_token': '<start_of_image>',
         'eoi_token': '<end_of_image>'}, extra=('<start_of_turn>', '<end_of_turn>'),
        bos='<bos>', eos='<eos>')
    size, patch, tokens = 16, 4, 4
    text = Gemma3TextConfig(**TEXT, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                            layer_types=['sliding_attention', 'full_attention'] * 2,
                            **_ids(tokenizer))
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ('boi_token_index', '<start_of_image>'), ('eoi_token_index', '<end_of_image>'),
        ('image_token_index', '<image_soft_token>'))}
    vision = _siglip(size, patch, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens,
                          **ids)
    image_processor = Gemma3ImageProcessorPil(size={'height': size, 'width': size},
                                              do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens,
        chat_template=_template(bos='<bos>', start='<start_of_turn>', sep='\n',
                                end='<end_of_turn>\n', image='<start_of_image>'))
    return _finish(_model(Gemma3ForConditionalGeneration, config), tokenizer), processor


BUILDERS: dict[str, Callable] = {
    'llava': llava, 'llava_onevision': llava_onevision, 'idefics3': idefics3,
    'smolvlm': smolvlm, 'qwen2_vl': qwen2_vl, 'qwen2_5_vl': qwen2_5_vl,
    'paligemma': paligemma, 'gemma3': gemma3,
}


def save_tiny(family: str, out: Path, seed: int = 0) -> Path:
    """Build the tiny `family` checkpoint with seeded weights and save_pretrained it to `out`."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write tiny checkpoints: `python -m ros2_gmskip.vlm.tiny_families OUT [FAMILY ...]`."""
    import argparse
    parser = argparse.ArgumentParser(prog='python -m ros2_gmskip.vlm.tiny_families',
                                     description=main.__doc__)
    parser.add_argument('out', type=Path, help='folder to write one checkpoint folder per family')
    parser.add_argument('families', nargs='*', metavar='FAMILY',
                        help=f'families to build (default: all of {", ".join(BUILDERS)})')
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in BUILDERS]
    if unknown:
        parser.error(f'unknown family {unknown[0]!r}: choose from {", ".join(BUILDERS)}')
    for family in args.families or list(BUILDERS):
        print(save_tiny(family, args.out / family))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
