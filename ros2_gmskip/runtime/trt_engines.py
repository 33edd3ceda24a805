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
`engine_manifest.json`: what a folder of TensorRT engines was built from, where and how.

TensorRT engines only run on the TensorRT version and the GPU model they were built with, and only
mean something together with the bundle (tokenizer, embeddings, preprocessing) whose ONNX graphs
they were built from. The manifest records all of it; `check_engine_manifest` refuses a folder that
does not match, with one line that says what differs and what to run, in the spirit of Autoware's
tensorrt_common. Layout (`ros2_gmskip/trt-engines@1`):

    format, created_at, created_by
    tensorrt_version                 tensorrt.__version__ of the builder
    gpu {name, compute_capability}   e.g. {"NVIDIA Orin", "8.7"}
    precision                        fp16 | bf16 | int8 | fp32
    limits {max_batch, max_prompt, max_new_tokens}, prompt_len
    profiles {graph: [{name, shapes: {input: {min, opt, max}}}]}
    engines {graph: {file, sha256, source_onnx, source_onnx_sha256}}   vision and each decoder
                                     segment (bundle_format.Segment.name: decoder, decoder.1, ...)
    bundle_path, bundle_manifest_sha256
    workspace_mb, dla_core, cache_key

Pure Python (json, hashlib): readable and checkable on any machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from ros2_gmskip.bundle_format import load_bundle, MANIFEST as BUNDLE_MANIFEST, Manifest, \
    sha256_file
from ros2_gmskip.errors import EngineError
from ros2_gmskip.formats import read_format_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = 'ros2_gmskip/trt-engines@1'
MANIFEST = 'engine_manifest.json'
REQUIRED_KEYS = ('format', 'tensorrt_version', 'gpu', 'precision', 'profiles', 'engines',
                 'bundle_manifest_sha256', 'workspace_mb', 'dla_core', 'created_at', 'created_by')
ENGINE_KEYS = ('file', 'sha256', 'source_onnx', 'source_onnx_sha256')


def normalize_cc(cc: Any) -> str | None:
    """Compute capability as 'major.minor' from (8, 7), '8.7', 'sm_87' or 87; None if unknown."""
    if cc is None:
        return None
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f'{int(cc[0])}.{int(cc[1])}'
    text = str(cc).strip().lower()
    if text.startswith('sm_'):
        text = text[3:]
    if '.' in text:
        major, _, minor = text.partition('.')
        if major.isdigit() and minor.isdigit():
            return f'{int(major)}.{int(minor)}'
    elif text.isdigit() and len(text) >= 2:
        return f'{int(text[:-1])}.{int(text[-1])}'
    raise EngineError(f'cannot read compute capability {cc!r}: expected e.g. "8.7" or (8, 7)')


def sm(cc: str | None) -> str:
    """'8.7' -> 'sm_87' (how TensorRT and nvcc name architectures)."""
    return f'sm_{cc.replace(".", "")}' if cc else 'sm_unknown'


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rebuild_hint(engine_dir: Path, bundle_path: Any) -> str:
    bundle = str(bundle_path) if bundle_path else 'BUNDLE'
    return f'rebuild with ros2-gmskip build-engine {bundle} --out {engine_dir}'


def _bundle_parts(bundle: Any) -> tuple[Path, Manifest]:
    """Return (folder, manifest) of a `Bundle` or a bundle folder (read, not hashed)."""
    if hasattr(bundle, 'manifest') and hasattr(bundle, 'path'):
        return Path(bundle.path), bundle.manifest
    b = load_bundle(Path(bundle), verify=False)
    return b.path, b.manifest


def bundle_manifest_sha256(bundle_path: Path) -> str:
    return sha256_file(Path(bundle_path) / BUNDLE_MANIFEST)


def make_engine_manifest(*, bundle: Any, engines: dict[str, dict], tensorrt_version: str,
                         gpu_name: str | None, compute_capability: Any, precision: str,
                         profiles: dict, limits: dict, prompt_len: int, workspace_mb: int,
                         dla_core: int | None, cache_key: str) -> dict:
    """Return the manifest dict; `engines` is {graph: {file, sha256, source_onnx, ..._sha256}}."""
    from ros2_gmskip import __version__

    bundle_path, _ = _bundle_parts(bundle)
    for graph, entry in engines.items():
        missing = [k for k in ENGINE_KEYS if k not in entry]
        assert not missing, f'engine entry {graph} lacks {missing}'
    return {
        'format': FORMAT,
        'created_at': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
        'created_by': f'ros2_gmskip {__version__}',
        'tensorrt_version': str(tensorrt_version),
        'gpu': {'name': gpu_name, 'compute_capability': normalize_cc(compute_capability)},
        'precision': str(precision),
        'limits': dict(limits),
        'prompt_len': int(prompt_len),
        'profiles': profiles,
        'engines': engines,
        'bundle_path': str(bundle_path),
        'bundle_manifest_sha256': bundle_manifest_sha256(bundle_path),
        'workspace_mb': int(workspace_mb),
        'dla_core': dla_core,
        'cache_key': cache_key,
    }


def write_engine_manifest(engine_dir: Path, manifest: dict) -> Path:
    """Write `engine_manifest.json` atomically (last step of a build: no manifest, no engines)."""
    return write_json_atomic(Path(engine_dir) / MANIFEST, manifest, sort_keys=True)


def read_engine_manifest(engine_dir: Path) -> dict:
    """
    Return the manifest of `engine_dir`.

    EngineError (one line, with what to run) if the folder or its manifest is missing,
    unreadable, of another format or incomplete.
    """
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST
    if not engine_dir.is_dir():
        raise EngineError(f'engine folder {str(engine_dir)!r} does not exist: build it with '
                          f'ros2-gmskip build-engine BUNDLE --out {engine_dir}')
    if not path.is_file():
        raise EngineError(f'engine {engine_dir} has no {MANIFEST} (not built, or the build was '
                          f'interrupted): build it with ros2-gmskip build-engine BUNDLE '
                          f'--out {engine_dir}')
    manifest = read_format_json(path, FORMAT, EngineError, f'engine {engine_dir}',
                                _rebuild_hint(engine_dir, None))
    hint = _rebuild_hint(engine_dir, manifest.get('bundle_path'))
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise EngineError(f'engine {engine_dir}: {MANIFEST} lacks {", ".join(missing)}: {hint}')
    engines = manifest['engines']
    if not isinstance(engines, dict) or not engines or not isinstance(manifest['gpu'], dict):
        raise EngineError(f'engine {engine_dir}: {MANIFEST} has no engines / gpu entry: {hint}')
    for graph, entry in engines.items():
        lacking = [k for k in ENGINE_KEYS if not isinstance(entry, dict) or k not in entry]
        if lacking:
            raise EngineError(f'engine {engine_dir}: {MANIFEST} entry {graph!r} lacks '
                              f'{", ".join(lacking)}: {hint}')
        name = entry['file']
        if not isinstance(name, str) or Path(name).name != name or name in ('.', '..'):
            raise EngineError(f'engine {engine_dir}: {MANIFEST} lists {name!r}, not a file name '
                              f'in the engine folder: {hint}')
    return manifest


def check_engine_manifest(engine_dir: Path, trt_version: str, gpu_name: str | None,
                          compute_capability: Any, bundle: Any = None,
                          verify: bool = True) -> dict:
    """
    Refuse engines that cannot run here or do not belong to `bundle`; return the manifest.

    Checks, in order: manifest present and well formed; TensorRT version, GPU name and compute
    capability equal to this machine's (None - the GPU could not be queried, here or on the
    build machine - skips that part with a warning); every engine file present and, with
    `verify`, its sha256; with `bundle` (a `Bundle` or a folder), each engine's source ONNX hash
    equal to the bundle's. Each failure is one EngineError line ending in the command to run.
    """
    engine_dir = Path(engine_dir)
    manifest = read_engine_manifest(engine_dir)
    bundle_path = None
    bundle_manifest = None
    if bundle is not None:
        bundle_path, bundle_manifest = _bundle_parts(bundle)
    hint = _rebuild_hint(engine_dir, bundle_path or manifest.get('bundle_path'))

    built_gpu = manifest['gpu']
    built_cc = normalize_cc(built_gpu.get('compute_capability'))
    here_cc = normalize_cc(compute_capability)
    if None in (gpu_name, here_cc, built_gpu.get('name'), built_cc):
        which = 'of this machine is' if None in (gpu_name, here_cc) else 'they were built on is'
        log.warning('engine %s: the GPU %s not known (install cuda-python): not checking that '
                    'the engines were built for this GPU', engine_dir, which)
    version_differs = str(manifest['tensorrt_version']) != str(trt_version)
    gpu_differs = None not in (gpu_name, built_gpu.get('name')) and built_gpu['name'] != gpu_name
    cc_differs = None not in (here_cc, built_cc) and built_cc != here_cc
    if version_differs or gpu_differs or cc_differs:
        raise EngineError(
            f'engine {engine_dir} was built with TensorRT {manifest["tensorrt_version"]} for '
            f'{built_gpu.get("name")} ({sm(built_cc)}); this is TensorRT {trt_version} on '
            f'{gpu_name or "an unknown GPU"} ({sm(here_cc)}): {hint}')

    for graph, entry in manifest['engines'].items():
        path = engine_dir / entry['file']
        if not path.is_file():
            raise EngineError(f'engine {engine_dir}: {entry["file"]} ({graph}) is missing: {hint}')
        if verify:
            actual = sha256_file(path)
            if actual != entry['sha256']:
                raise EngineError(
                    f'engine {engine_dir}: {entry["file"]} sha256 mismatch (manifest '
                    f'{str(entry["sha256"])[:12]}.., file {actual[:12]}..): the file was changed '
                    f'or copied incompletely: {hint}')
        if bundle_manifest is not None:
            theirs = bundle_manifest.files.get(entry['source_onnx'])
            if theirs != entry['source_onnx_sha256']:
                raise EngineError(
                    f'engine {engine_dir}: {graph} was built from {entry["source_onnx"]} '
                    f'{str(entry["source_onnx_sha256"])[:12]}.., bundle {bundle_path} has '
                    f'{str(theirs)[:12] if theirs else "no such file"}.. (re-exported since?): '
                    f'{hint}')
    return manifest


def needs_rebuild(engine_dir: Path, trt_version: str, gpu_name: str | None,
                  compute_capability: Any, bundle: Any = None, cache_key: str | None = None,
                  verify: bool = True) -> str | None:
    """
    Why the engines in `engine_dir` must be (re)built, or None if they are good to use.

    The reason is `check_engine_manifest`'s message; with `cache_key` (what `build-engine` would
    build now, `trt_profiles.cache_key`) a manifest built with other settings is stale too.
    This is `build-engine`'s default (skip an up-to-date build) and `TrtBackend(rebuild=True)`'s
    test.
    """
    try:
        manifest = check_engine_manifest(engine_dir, trt_version, gpu_name,
                                         compute_capability, bundle=bundle, verify=verify)
    except EngineError as err:
        return str(err)
    if cache_key is not None and manifest.get('cache_key') != cache_key:
        limits = manifest.get('limits') or {}
        return (f'engine {engine_dir} was built with other settings (precision '
                f'{manifest["precision"]}, max batch {limits.get("max_batch")}, max prompt '
                f'{limits.get("max_prompt")}, max new tokens {limits.get("max_new_tokens")}, '
                f'DLA core {manifest.get("dla_core")})')
    return None
