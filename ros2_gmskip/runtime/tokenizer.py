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
Prompt ids and detokenisation from a bundle with the `tokenizers` library (no transformers).

The exporter renders the model's chat template once, with a `{prompt}` placeholder and the image
token already expanded to the number of image embeddings, and stores it in the manifest. So the
runtime needs no jinja and no processor: the prompt ids are `tokenizer.json` applied to that
string, and they are cached per prompt (a node asks the same question of every frame).

    tok = PromptTokenizer.from_bundle(bundle)
    ids = tok.prompt_ids('describe the scene.')   # int64 (T,), with image_token_id x n inside
    tok.decode([7, 12, 9])                         # 'a red car.'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ros2_gmskip.bundle_format import Bundle, TOKENIZER, Tokens
from ros2_gmskip.errors import BundleError
from tokenizers import Tokenizer

PLACEHOLDER = '{prompt}'


def clean_up_tokenization(text: str) -> str:
    """Undo tokenizer spacing as transformers' `clean_up_tokenization` (if the config asks)."""
    for a, b in ((' .', '.'), (' ?', '?'), (' !', '!'), (' ,', ','), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class PromptTokenizer:
    """tokenizer.json + the manifest's `tokens` entry: prompt -> ids, ids -> text."""

    def __init__(self, tokenizer_path: Path, tokens: Tokens, max_cached: int = 64) -> None:
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as err:  # noqa: BLE001 - tokenizers raises its own Exception type
            raise BundleError(f'cannot read tokenizer {str(tokenizer_path)!r}: {err}') from err
        template = tokens.prompt_template
        if template.count(PLACEHOLDER) != 1:
            raise BundleError(f'prompt_template must contain {PLACEHOLDER} once, got {template!r}')
        self.prefix, _, self.suffix = template.partition(PLACEHOLDER)
        self.image_token_id = int(tokens.image_token_id)
        self.num_image_tokens = int(tokens.num_image_tokens)
        self.add_special_tokens = bool(tokens.add_special_tokens)
        self.clean_up_spaces = bool(tokens.clean_up_tokenization_spaces)
        self.stop_ids = tuple(int(i) for i in tokens.stop_token_ids or [tokens.eos_token_id])
        self._cache: dict[str, np.ndarray] = {}
        self._max_cached = max_cached

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> 'PromptTokenizer':
        """Return the tokenizer of a loaded bundle."""
        return cls(bundle.file(TOKENIZER), bundle.manifest.tokens)

    def prompt_ids(self, prompt: str) -> np.ndarray:
        """Token ids (T,) int64 of the full templated prompt; read-only, cached per prompt."""
        ids = self._cache.get(prompt)
        if ids is None:
            text = f'{self.prefix}{prompt}{self.suffix}'
            encoding = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
            ids = np.asarray(encoding.ids, dtype=np.int64)
            found = int((ids == self.image_token_id).sum())
            if found != self.num_image_tokens:
                raise BundleError(f'prompt {prompt!r} gives {found} image tokens, '
                                  f'the vision graph makes {self.num_image_tokens}: '
                                  'do not put the image token in the prompt text')
            ids.setflags(write=False)
            if len(self._cache) >= self._max_cached:
                self._cache.pop(next(iter(self._cache)))
            self._cache[prompt] = ids
        return ids

    def decode(self, ids) -> str:
        """Return the text of `ids`, special tokens skipped, stripped (as the torch reference)."""
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        if self.clean_up_spaces:
            text = clean_up_tokenization(text)
        return text.strip()
