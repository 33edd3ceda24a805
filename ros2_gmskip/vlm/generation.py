"""Batched greedy generation with Hugging Face `generate` (reference path of evaluate/calibrate)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ros2_gmskip.runtime.types import DEFAULT_PROMPT
from ros2_gmskip.vlm.prompting import build_inputs


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
        new = out[:, inputs['input_ids'].shape[1]:]
        texts += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return texts


@torch.no_grad()
def generate_from_embeds(model, processor, inputs_embeds: torch.Tensor,
                         attention_mask: torch.Tensor, max_new_tokens: int = 48) -> list[str]:
    """Greedy decode from precomputed input embeddings (image features already merged in).

    GM-Skip evaluates many decoder-only candidates on the same images: the vision tower runs once
    per image and only this decoder part runs per candidate.
    """
    out = model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         max_new_tokens=max_new_tokens, do_sample=False)
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


Generator = Callable[[Sequence[np.ndarray]], list[str]]
