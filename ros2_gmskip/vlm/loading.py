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
Load a VLM folder (ours or a real checkpoint) safely.

Safetensors only, remote code opt-in, and one-line errors that say what is wrong with the folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ros2_gmskip.errors import ModelLoadError
from ros2_gmskip.runtime.defaults import default_model_dir  # noqa: F401 - re-exported
from ros2_gmskip.vlm.processors import load_processor, one_line

LOG = logging.getLogger(__name__)


def check_model_dir(model_dir: Path) -> None:
    """Fail fast, in one line, on the folder problems users actually hit."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f'model folder {str(model_dir)!r} does not exist: pass --model DIR '
                             'with a save_pretrained folder (config.json + *.safetensors)')
    config = model_dir / 'config.json'
    if not config.is_file():
        raise ModelLoadError(f'model folder {str(model_dir)!r} has no config.json')
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f'config.json in {str(model_dir)!r} is not valid JSON: {err}') from err
    weights = sorted(model_dir.glob('*.safetensors'))
    if not weights:
        pickled = sorted(p.name for p in model_dir.glob('*.bin'))
        hint = (f' (found pickle weights {pickled}: convert them to safetensors; pickles are '
                'never loaded)') if pickled else ''
        raise ModelLoadError(f'model folder {str(model_dir)!r} has no *.safetensors weights{hint}')
    from safetensors import safe_open
    for path in weights:
        try:
            with safe_open(str(path), framework='np') as f:
                keys = list(f.keys())
                if keys:
                    f.get_slice(keys[-1])
            if path.stat().st_size < 8:
                raise ValueError('file too small')
        except Exception as err:  # noqa: BLE001 - safetensors raises several types
            raise ModelLoadError(f'corrupt safetensors file {str(path)!r}: {err}') from err


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """
    Raise ModelLoadError naming --trust-remote-code if the folder ships code that was not trusted.

    Called when loading failed: a folder whose config.json has an `auto_map` needs its own Python
    files, which are never run unless the user asks for it.
    """
    if trust_remote_code:
        return
    try:
        config = json.loads((Path(model_dir) / 'config.json').read_text())
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and config.get('auto_map'):
        raise ModelLoadError(f'model folder {str(model_dir)!r} needs its own Python code '
                             '(config.json auto_map), which is not run by default: read it, then '
                             'pass --trust-remote-code to allow it')


def load_vlm(model_dir: Path, trust_remote_code: bool = False, dtype: str = 'float32'):
    """(model, processor) from a save_pretrained folder, in eval mode, offline."""
    import torch
    from transformers import AutoModelForImageTextToText

    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, use_safetensors=True,
            local_files_only=True, dtype=getattr(torch, dtype))
    except Exception as err:  # noqa: BLE001 - transformers raises many types
        check_remote_code(model_dir, trust_remote_code)
        raise ModelLoadError(f'cannot load model from {str(model_dir)!r}: {one_line(err)}'
                             ) from err
    processor = load_processor(model_dir, trust_remote_code=trust_remote_code)
    model.eval()
    return model, processor
