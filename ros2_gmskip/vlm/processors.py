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
Load a checkpoint's processor without the pieces that cannot be installed here.

transformers 5 builds a video processor for Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision and SmolVLM,
and its video processors import torchvision, which has no wheel beside the CPU torch build this
project pins. The node describes camera frames, never videos, so those processors are built
image-only: the same processor class (same prompt expansion, same image processor, same
tokenizer) minus its `video_processor` attribute. The image processors themselves fall back to
their PIL implementations without torchvision (`*ImageProcessorPil`), which transformers keeps
equal to the slow reference processors.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
import types
from typing import Any

from ros2_gmskip.errors import ModelLoadError

LOG = logging.getLogger(__name__)
VIDEO = 'video_processor'


def one_line(err: BaseException) -> str:
    """Return `Type: first non-empty line` of an exception: never an empty reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f'{type(err).__name__}: {lines[0] if lines else repr(err)}'


def has_torchvision() -> bool:
    """Return whether torchvision can be imported (video processors need it)."""
    return importlib.util.find_spec('torchvision') is not None


@functools.lru_cache(maxsize=None)
def image_only(cls: type) -> type:
    """
    Return `cls` without its video processor: a subclass of the same name.

    The name stays the processor's own, so `save_pretrained` writes the real `processor_class`
    and the folder loads with the real class where torchvision is installed.
    """
    if VIDEO not in cls.get_attributes():
        return cls

    def get_attributes(klass) -> list[str]:
        return [a for a in cls.get_attributes() if a != VIDEO]

    from transformers.processing_utils import ProcessorMixin
    # SmolVLM overrides apply_chat_template only to fill in its video processor's frame
    # defaults; with no video processor the base template rendering is the whole job.
    return type(cls.__name__, (cls,), {'get_attributes': classmethod(get_attributes),
                                       '__init__': _video_optional(cls.__init__),
                                       'apply_chat_template': ProcessorMixin.apply_chat_template,
                                       '__module__': cls.__module__,
                                       '__doc__': f'{cls.__name__} for images only.'})


def _video_optional(init: types.FunctionType) -> types.FunctionType:
    """
    Return a copy of `init` whose `video_processor` parameter defaults to None.

    A copy of the function, not a wrapper: transformers reads `__init__.__code__` to match the
    saved processor settings (image_seq_len, chat_template, ...) to parameters.
    """
    code = init.__code__
    names = code.co_varnames[:code.co_argcount]
    defaults = init.__defaults__ or ()
    first_default = len(names) - len(defaults)
    index = names.index(VIDEO)
    if index < first_default:
        defaults = (None,) * (first_default - index) + defaults
    copy = types.FunctionType(code, init.__globals__, init.__name__, defaults, init.__closure__)
    copy.__kwdefaults__ = init.__kwdefaults__
    copy.__qualname__ = init.__qualname__
    return copy


def processor_class(model_dir: Path, trust_remote_code: bool = False) -> type:
    """Return the processor class a folder declares (processor_config.json or the model type)."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import (PROCESSOR_MAPPING,
                                                          processor_class_from_name)
    import json
    for name in ('processor_config.json', 'preprocessor_config.json', 'tokenizer_config.json'):
        path = Path(model_dir) / name
        if path.is_file():
            declared = json.loads(path.read_text()).get('processor_class')
            if declared:
                found = processor_class_from_name(declared)
                if found is not None:
                    return found
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                        local_files_only=True)
    return PROCESSOR_MAPPING[type(config)]


def load_processor(model_dir: Path, trust_remote_code: bool = False) -> Any:
    """Return the folder's processor; image-only where its video processor cannot be built."""
    from transformers import AutoProcessor
    model_dir = Path(model_dir)
    try:
        return AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                             local_files_only=True)
    except Exception as err:  # noqa: BLE001 - transformers raises many types
        first = err
    try:
        cls = processor_class(model_dir, trust_remote_code)
    except Exception:  # noqa: BLE001 - report the original failure below
        cls = None
    if cls is None or VIDEO not in cls.get_attributes() or has_torchvision():
        raise ModelLoadError(f'cannot load processor/tokenizer from {str(model_dir)!r}: '
                             f'{one_line(first)}') from first
    LOG.info('%s: building it without its video processor (torchvision is not installed)',
             cls.__name__)
    try:
        return image_only(cls).from_pretrained(model_dir, local_files_only=True)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f'cannot load processor/tokenizer from {str(model_dir)!r}: '
                             f'{one_line(err)} (built without its video processor: '
                             'torchvision is not installed)') from err
