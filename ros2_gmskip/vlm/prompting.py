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

"""Prompts through the processor's chat template: our model and real checkpoints share one path."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ros2_gmskip.runtime.results import DEFAULT_PROMPT


def prompt_text(processor, prompt: str = DEFAULT_PROMPT) -> str:
    """Return the user turn from the template: image placeholder + prompt + generation prompt."""
    messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': prompt}]}]
    if getattr(processor, 'chat_template', None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(processor, 'image_token', '<image>')
    return f'{token}{prompt}'


def build_inputs(processor, images: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT):
    """
    Return batched model inputs (pt tensors) for RGB uint8 images with one shared prompt.

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
    """Return the prompt's token ids exactly as inference builds them (image tokens expanded)."""
    blank = np.zeros((8, 8, 3), dtype=np.uint8)
    return build_inputs(processor, [blank], prompt)['input_ids'][0].tolist()
