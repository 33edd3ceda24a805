"""Prompts through the processor's chat template: our model and real checkpoints share one path."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ros2_gmskip.runtime.types import DEFAULT_PROMPT


def prompt_text(processor, prompt: str = DEFAULT_PROMPT) -> str:
    """The templated user turn (image placeholder + prompt) ending with the generation prompt."""
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': prompt}]}]
    if getattr(processor, 'chat_template', None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(processor, 'image_token', '<image>')
    return f'{token}{prompt}'


def build_inputs(processor, images: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT):
    """Batched model inputs (pt tensors) for RGB uint8 images with one shared prompt.

    One image per sample, passed as one list per sample: Idefics3, SmolVLM and Gemma 3 read a
    flat list as N images of a single sample. A template that writes the BOS token itself is
    not given a second one by the tokenizer. Training-only outputs (labels) are dropped.
    """
    text = prompt_text(processor, prompt)
    bos = getattr(getattr(processor, 'tokenizer', None), 'bos_token', None)
    inputs = processor(images=[[image] for image in images], text=[text] * len(images),
                       return_tensors='pt', padding=True,
                       add_special_tokens=not (bos and text.startswith(bos)))
    inputs.pop('labels', None)
    return inputs


def prompt_ids_of(processor, prompt: str = DEFAULT_PROMPT) -> list[int]:
    """The prompt's token ids exactly as inference builds them (image tokens expanded)."""
    blank = np.zeros((8, 8, 3), dtype=np.uint8)
    return build_inputs(processor, [blank], prompt)['input_ids'][0].tolist()
