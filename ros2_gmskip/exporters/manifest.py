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
Read what a bundle manifest records from the Hugging Face model: tokens, preprocessing, versions.

The manifest itself (its dataclasses, file names, version, reading and writing) is
`ros2_gmskip.bundle_format`; this module fills its model-specific parts at export time.
Torch-free: the HF tokenizer / image processor objects are only read (duck-typed).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from ros2_gmskip.bundle_format import MANIFEST, Preprocess, sha256_file, Tokens
from ros2_gmskip.errors import ModelLoadError
from ros2_gmskip.runtime.preprocess import RESAMPLE_NAMES

PLACEHOLDER = '{prompt}'
_SENTINEL = 'ZQXPROMPTSENTINELQXZ'      # rendered through the chat template, then replaced


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that made the bundle."""
    out: dict[str, str | None] = {}
    for dist in ('torch', 'transformers', 'onnx', 'onnxruntime', 'ros2_gmskip'):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if out['ros2_gmskip'] is None:
        from ros2_gmskip import __version__
        out['ros2_gmskip'] = __version__
    return out


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def tokens_entry(processor: Any, model_config: Any, generation_config: Any,
                 num_image_tokens: int, prompt_text) -> Tokens:
    """
    Return the manifest's `tokens`: ids and the prompt template with the image token expanded.

    `prompt_text(processor, prompt)` renders the chat template (ros2_gmskip.vlm.prompting); it is
    rendered once with a sentinel prompt, which then becomes the `{prompt}` placeholder.
    """
    tokenizer = processor.tokenizer
    image_token = getattr(processor, 'image_token', None) or '<image>'
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    config_id = getattr(model_config, 'image_token_id', None)
    if config_id is None:
        config_id = getattr(model_config, 'image_token_index', None)
    if config_id is not None and int(config_id) != int(image_token_id):
        raise ModelLoadError(f"the processor's image token {image_token!r} is id "
                             f'{image_token_id}, '
                             f'the model config says {config_id}')
    rendered = prompt_text(processor, _SENTINEL)
    if rendered.count(_SENTINEL) != 1 or rendered.count(image_token) != 1:
        raise ModelLoadError(f'the chat template renders {rendered!r}: '
                             f'expected the prompt and the image token {image_token!r} once each')
    if PLACEHOLDER in rendered:
        raise ModelLoadError(f'the chat template itself contains {PLACEHOLDER!r}')
    template = rendered.replace(_SENTINEL, PLACEHOLDER)
    template = template.replace(image_token, image_token * num_image_tokens)
    eos = _ids(getattr(generation_config, 'eos_token_id', None)) or _ids(tokenizer.eos_token_id)
    return Tokens(
        image_token=image_token, image_token_id=int(image_token_id),
        num_image_tokens=int(num_image_tokens), prompt_template=template,
        stop_token_ids=tuple(eos), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos[0] if eos else None, pad_token_id=tokenizer.pad_token_id,
        add_special_tokens=True,          # the processor tokenises with special tokens (BOS)
        clean_up_tokenization_spaces=bool(getattr(tokenizer, 'clean_up_tokenization_spaces',
                                                  False)))


def preprocess_entry(image_processor: Any) -> Preprocess:
    """Return the manifest's `preprocess`; ModelLoadError if the runtime cannot replay it."""
    size = dict(getattr(image_processor, 'size', None) or {})
    name = type(image_processor).__name__
    if not (size.get('height') and size.get('width')) or {k for k, v in size.items() if v} - {
            'height', 'width'}:
        raise ModelLoadError(f'{name} resizes to {size}: export supports a fixed height/width '
                             'resize only (not shortest_edge / crops) for now')
    if any(getattr(image_processor, flag, False) for flag in ('do_center_crop', 'do_pad')):
        raise ModelLoadError(f'{name} crops or pads: export supports resize + rescale + normalise '
                             'only for now')
    if getattr(image_processor, 'do_resize', True) is False:
        raise ModelLoadError(f'{name} has do_resize=False: the vision graph needs a fixed size')
    resample = getattr(image_processor, 'resample', None)
    resample = 2 if resample is None else int(resample)        # transformers' default: bilinear
    if resample not in RESAMPLE_NAMES:
        raise ModelLoadError(f'{name} uses resample filter {resample}, unknown to the runtime')
    rescale = getattr(image_processor, 'rescale_factor', 1 / 255)
    normalize = getattr(image_processor, 'do_normalize', True)
    mean, std = getattr(image_processor, 'image_mean', None), getattr(image_processor, 'image_std',
                                                                      None)
    return Preprocess(
        size=(int(size['height']), int(size['width'])), resample=RESAMPLE_NAMES[resample],
        rescale_factor=float(rescale) if getattr(image_processor, 'do_rescale', True) else None,
        image_mean=tuple(float(m) for m in mean) if normalize and mean is not None else None,
        image_std=tuple(float(s) for s in std) if normalize and std is not None else None)


def file_hashes(folder: Path) -> dict[str, str]:
    """{name: sha256} of every file in `folder` except the manifest."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).iterdir())
            if p.is_file() and p.name != MANIFEST}
