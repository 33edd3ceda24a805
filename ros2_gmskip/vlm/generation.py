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

"""Batched greedy generation with Hugging Face `generate`: evaluate's and calibrate's reference."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.vlm.prompting import build_inputs
import torch
from tqdm import tqdm


@torch.no_grad()
def generate_texts(model, processor, images: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT,
                   max_new_tokens: int = 48, batch_size: int = 16, progress: bool = False,
                   ) -> list[str]:
    """Greedy descriptions for RGB uint8 images, in order."""
    texts: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc='generate', disable=not progress,
                      unit='batch'):
        inputs = build_inputs(processor, images[start:start + batch_size], prompt)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts += decode_new_tokens(processor, out, inputs['input_ids'].shape[1])
    return texts


def decode_new_tokens(processor, out: torch.Tensor, prompt_len: int) -> list[str]:
    """Texts of what `generate` added after the prompt (output rows are prompt + new tokens)."""
    return [t.strip() for t in
            processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)]
