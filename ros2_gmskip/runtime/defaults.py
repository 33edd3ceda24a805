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
Where the embedded default model, its shipped skip plan and its cached ONNX bundles live.

The runtime never imports torch, so a missing bundle is exported by running
`ros2-gmskip export` in a subprocess once (like Autoware's TensorRT nodes building an engine on
first start); later starts find it in the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
import subprocess
import sys

from ros2_gmskip import __version__
from ros2_gmskip.bundle_format import DRAFT, FORMAT, sha256_file
from ros2_gmskip.errors import BundleError
from ros2_gmskip.tokenskip.settings import TokenSkip

LOG = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = 'gmskip-llava-scenes'
DEFAULT_PLAN_NAME = 'accuracy-reverse.json'


def package_share() -> Path:
    """Return the folder holding models/, config/, schema/, launch/: source tree or share."""
    src = Path(__file__).resolve().parents[2]
    if (src / 'models').is_dir():
        return src
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('ros2_gmskip'))
    except Exception:  # noqa: BLE001 - not installed through ament
        return Path(sys.prefix) / 'share' / 'ros2_gmskip'


def default_model_dir() -> Path:
    return package_share() / 'models' / DEFAULT_MODEL_NAME


def default_plan_path() -> Path | None:
    path = default_model_dir() / 'plans' / DEFAULT_PLAN_NAME
    return path if path.is_file() else None


def cache_dir() -> Path:
    """$ROS2_GMSKIP_CACHE, else $XDG_CACHE_HOME/ros2_gmskip, else ~/.cache/ros2_gmskip."""
    if os.environ.get('ROS2_GMSKIP_CACHE'):
        return Path(os.environ['ROS2_GMSKIP_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'ros2_gmskip'


QUANTIZED_VALIDATE_N = 50          # scenes that judge a quantized decode graph's agreement


def bundle_cache_path(model_dir: Path, plan: Path | None, tokens: TokenSkip | None = None,
                      fused_weights: str = 'fp32', ladder: Path | None = None) -> Path:
    """
    Return the cache folder for one export of the model.

    It is keyed by the model weights, its draft table (rebuilding it re-exports), the plan file,
    the token-skip settings (None: the plan's), the fused decoder's decode-step weights, the plan
    ladder (a ladder bundle), this package's version and the bundle format (bundle_format.FORMAT:
    a new layout, a new folder).
    """
    h = hashlib.sha256(f'{__version__}/{FORMAT}'.encode())
    for weights in sorted(Path(model_dir).glob('*.safetensors')):
        h.update(sha256_file(weights).encode())
    draft = Path(model_dir) / DRAFT
    if draft.is_file():
        h.update(f'draft={sha256_file(draft)}'.encode())
    h.update(sha256_file(plan).encode() if plan else b'no-plan')
    if tokens is not None and (plan is not None or not tokens.is_off):   # no plan: None == off
        h.update(json.dumps(tokens.to_dict(), sort_keys=True).encode())
    if fused_weights != 'fp32':
        h.update(f'fused-weights={fused_weights}'.encode())
    if ladder is not None:
        h.update(f'ladder={sha256_file(ladder)}'.encode())
    tag = 'ladder' if ladder else 'pruned' if plan else 'full'
    return cache_dir() / 'bundles' / f'{Path(model_dir).name}-{tag}-{h.hexdigest()[:12]}'


def ensure_bundle(model_dir: Path | None = None, plan: Path | None = None, full: bool = False,
                  validate_n: int = 5, tokens: TokenSkip | None = None,
                  fused_weights: str = 'fp32', ladder: Path | None = None) -> Path:
    """
    Return a bundle for (model, plan, tokens), exported into the cache by a subprocess if missing.

    With no model and no plan: the default model pruned by its shipped plan (or unpruned: `full`).
    `tokens`: FastV / KV-removal settings; None applies the plan's `tokens`, TokenSkip() none.
    `fused_weights`: 'int4' / 'int8' exports the quantized fused decoder (export --fused-weights).
    `ladder`: the plan's ladder file: one bundle that runs every rung (export --ladder).
    """
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    if plan is None and not full and model_dir == default_model_dir():
        plan = default_plan_path()
    if ladder is not None and not Path(ladder).is_file():
        from ros2_gmskip.runtime.ladder import LadderError
        raise LadderError(f'no plan ladder {str(ladder)!r}: make one with ros2-gmskip ladder '
                          '--plan PLAN (calibrate writes it beside the plan)')
    path = bundle_cache_path(model_dir, plan, tokens, fused_weights, ladder)
    if (path / 'manifest.json').is_file():
        return path
    if fused_weights != 'fp32':       # the agreement threshold needs more than a handful of scenes
        validate_n = max(validate_n, QUANTIZED_VALIDATE_N)
    cmd = [sys.executable, '-m', 'ros2_gmskip.cli', 'export', '--model', str(model_dir),
           '--out', str(path), '--validate-n', str(validate_n)]
    if ladder is not None:
        cmd += ['--ladder', str(ladder)]
    elif plan:
        cmd += ['--plan', str(plan)]
    if fused_weights != 'fp32':
        cmd += ['--fused-weights', fused_weights]
    if tokens is not None:
        cmd += ['--no-plan-tokens']
        if tokens.fastv is not None and tokens.fastv.r > 0:
            cmd += ['--fastv', f'{tokens.fastv.k},{tokens.fastv.r!r}']
        if tokens.kv_ratio > 0:
            cmd += ['--kv-removal', repr(float(tokens.kv_ratio)), '--kv-start',
                    str(tokens.kv_start)]
    LOG.info('no cached ONNX bundle for %s%s: exporting once to %s', model_dir,
             f' + {plan.name}' if plan else '', path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not (path / 'manifest.json').is_file():
        tail = proc.stdout.strip().splitlines()[-1:] or ['(no output)']
        raise BundleError(f'exporting {model_dir} to {path} failed: {tail[0]} '
                          f'(run the command to see everything: {" ".join(cmd)})')
    return path
