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
Whether a request (prompt + max_new_tokens) fits the model: the check every backend runs.

    check_request('describe the scene.', prompt_tokens=70, max_new_tokens=48, context=256)

A decoder has `max_position_embeddings` positions (its context): the templated prompt with the
image tokens, plus every generated token, must fit in it. Past it, RoPE positions the model
never saw give fluent but meaningless text, so a request that does not fit is refused in one
line, naming the numbers and what to change, before any work: the node refuses such a parameter,
the CLI such an option.
"""

from __future__ import annotations

from typing import Any, Mapping

from ros2_gmskip.errors import PromptError


def check_prompt_text(prompt: Any) -> str:
    """Return `prompt` if it is a string with a non-space character; PromptError otherwise."""
    if not isinstance(prompt, str):
        raise PromptError(f'prompt {prompt!r} is not text: pass a string')
    if not prompt.strip():
        raise PromptError(f'prompt {prompt!r} is empty: ask the model something, e.g. '
                          "'describe the scene.'")
    return prompt


def check_request(prompt: str, prompt_tokens: int, max_new_tokens: int,
                  context: int | None) -> None:
    """Raise PromptError if the prompt is empty, or prompt + max_new_tokens exceeds `context`."""
    check_prompt_text(prompt)
    if not context:                       # the model does not say: nothing to check against
        return
    short = prompt if len(prompt) <= 40 else prompt[:37] + '...'
    if prompt_tokens >= context:
        raise PromptError(f'prompt {short!r} is {prompt_tokens} tokens with the image, the '
                          f"model's context is {context} positions: shorten the prompt")
    if prompt_tokens + max_new_tokens > context:
        raise PromptError(f'prompt {short!r} is {prompt_tokens} tokens with the image; with '
                          f'max_new_tokens {max_new_tokens} that is '
                          f"{prompt_tokens + max_new_tokens}, over the model's context of "
                          f'{context} positions: lower max_new_tokens to '
                          f'{context - prompt_tokens} or shorten the prompt')


def context_length(config: Mapping[str, Any]) -> int | None:
    """Return the decoder's max_position_embeddings from a config.json dict (None if absent)."""
    for section in (config.get('text_config'), config):
        if isinstance(section, Mapping):
            value = section.get('max_position_embeddings')
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
