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
Open an ONNX bundle (what `ros2-gmskip export` writes) and check it against its manifest.

    bundle = load_bundle(Path('bundles/gmskip-8of16'))
    bundle.decoder_path, bundle.tokens['eos_token_id'], bundle.decoder_config['num_layers']

A bundle folder holds vision.onnx, decoder.onnx, embed_tokens.npy, the tokenizer/processor files
and manifest.json (and, for Llama-style decoders, decoder.fused.onnx: the ONNX Runtime-only graph).
The manifest lists every file with its sha256; `load_bundle` hashes each file once and refuses a
bundle whose files are missing or differ, with a one-line `BundleError` that names the file and
says what to re-run. numpy/json only: no torch, no onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import logging
from pathlib import Path

from ros2_gmskip.errors import BundleError, EngineError
from ros2_gmskip.formats import read_format_json

log = logging.getLogger(__name__)

FORMAT = 'ros2_gmskip/onnx-bundle@1'
MANIFEST = 'manifest.json'
VISION, DECODER = 'vision.onnx', 'decoder.onnx'
EMBED, TOKENIZER = 'embed_tokens.npy', 'tokenizer.json'
REQUIRED_FILES = (VISION, DECODER, EMBED, TOKENIZER)
REQUIRED_KEYS = ('format', 'files', 'graphs', 'tokens', 'preprocess', 'decoder_config')
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory for multi-GB graphs)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder and manifest, with shortcuts to the parts the runtime reads."""

    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def vision_path(self) -> Path:
        return self.path / VISION

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER

    @property
    def embed_path(self) -> Path:
        return self.path / EMBED

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def tokens(self) -> dict:
        return self.manifest['tokens']

    @property
    def preprocess(self) -> dict:
        return self.manifest['preprocess']

    @property
    def decoder_config(self) -> dict:
        return self.manifest['decoder_config']

    @property
    def graphs(self) -> dict:
        return self.manifest['graphs']

    @property
    def plan(self) -> dict | None:
        return self.manifest.get('plan')

    @property
    def segments(self) -> list[dict]:
        """
        Return the decoder graphs in order: one (decoder.onnx) unless exported with token skipping.

        Each is {'file', 'layers': [first, stop], 'input', 'output', 'ranks'}.
        """
        segs = self.manifest.get('decoder_segments')
        if not segs:
            layers = self.decoder_config['num_layers']
            return [{'file': DECODER, 'layers': [0, layers], 'input': 'inputs_embeds',
                     'output': 'logits', 'ranks': False}]
        return segs

    @property
    def fused_decoder(self) -> dict | None:
        """
        Return the ONNX Runtime-only fused decoder graph (exporters/fused_decoder.py), or None.

        {'file', 'max_length', ...; quantized: 'decode_file', 'decode_weights', 'prefill_file',
        'prefill_weights'; for a token-skipping bundle 'segments' (one graph per decoder
        segment), 'attention_scale'}; None for an older bundle, or a model the fused graph does
        not cover.
        """
        return self.manifest.get('fused_decoder')

    @property
    def token_skip(self) -> dict | None:
        """Token-skip settings (FastV, KV removal; tokenskip.settings) it was exported with."""
        return self.manifest.get('token_skip')

    def require_plain_decoder(self, who: str) -> None:
        """Raise EngineError if the bundle skips tokens: `who` runs plain decoder graphs only."""
        skip = self.token_skip
        if len(self.segments) > 1 or (skip and (skip.get('fastv') or skip.get('kv_removal'))):
            raise EngineError(f'bundle {str(self.path)!r} was exported with token skipping '
                              f'({skip}): {who} runs plain bundles only so far: use the '
                              'onnxruntime backend (its CUDA / TensorRT execution providers too) '
                              'or export again with --no-plan-tokens')

    @property
    def model_sha256(self) -> str | None:
        return (self.manifest.get('source_model') or {}).get('sha256')


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f'bundle {str(path)!r} does not exist: create it with '
                          '`ros2-gmskip export --model DIR --out BUNDLE`')
    if not manifest_path.is_file():
        raise BundleError(f'bundle {str(path)!r} has no {MANIFEST}: it is not an export bundle '
                          '(or the export was interrupted): re-run ros2-gmskip export')
    manifest = read_format_json(manifest_path, FORMAT, BundleError, f'bundle {str(path)!r}',
                                're-run ros2-gmskip export with this version')
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f'bundle {str(path)!r}: manifest lacks {", ".join(missing)}: re-run '
                          'ros2-gmskip export')
    return manifest


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Return the bundle at `path`, its files checked against the manifest (sha256: `verify`)."""
    path = Path(path)
    manifest = _read_manifest(path)
    files = manifest['files']
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f'bundle {str(path)!r}: manifest does not list {name}: re-run '
                              'ros2-gmskip export')
    for name, expected in files.items():
        if Path(name).name != name or name in ('.', '..'):
            raise BundleError(f'bundle {str(path)!r}: manifest lists {name!r}, not a file name '
                              'in the bundle folder: re-run ros2-gmskip export')
        file = path / name
        if not file.is_file():
            raise BundleError(f'bundle {str(path)!r}: {name} is missing: '
                              're-run ros2-gmskip export')
        if verify:
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(f'bundle {str(path)!r}: {name} sha256 mismatch (manifest '
                                  f'{str(expected)[:12]}.., file {actual[:12]}..): re-run '
                                  'ros2-gmskip export')
    _check_segments(path, manifest)
    fused = manifest.get('fused_decoder')
    if fused is not None and not (isinstance(fused, dict) and fused.get('file') in files
                                  and isinstance(fused.get('max_length'), int)
                                  and fused['max_length'] > 0
                                  and fused.get('decode_file', fused['file']) in files
                                  and fused.get('prefill_file', fused['file']) in files):
        raise BundleError(f'bundle {str(path)!r}: manifest fused_decoder {fused!r} '
                          'does not name a listed file (and decode_file, prefill_file) and a '
                          'max_length: re-run ros2-gmskip export')
    if fused is not None and 'segments' in fused:
        _check_fused_segments(path, manifest)
    log.debug('bundle %s: %d files checked', path, len(files))
    return Bundle(path=path, manifest=manifest)


def _check_segments(path: Path, manifest: dict) -> None:
    """Check that decoder segments are listed files that tile the decoder's blocks in order."""
    segs = manifest.get('decoder_segments')
    if not segs:
        return
    try:
        stops = [0]
        for seg in segs:
            first, stop = seg['layers']
            if first != stops[-1] or stop <= first or seg['file'] not in manifest['files']:
                raise ValueError(seg)
            stops.append(stop)
        if stops[-1] != manifest['decoder_config']['num_layers'] or segs[0]['file'] != DECODER:
            raise ValueError(stops)
    except (KeyError, TypeError, ValueError):
        raise BundleError(f'bundle {str(path)!r}: manifest decoder_segments do not cover the '
                          'decoder blocks in order: re-run ros2-gmskip export') from None


def _check_fused_segments(path: Path, manifest: dict) -> None:
    """
    Check a token-skipping fused decoder's segments against the decoder segments.

    It needs one listed graph (and decode-step graph, when quantized) per decoder segment, over
    the same blocks, and an attention scale for FastV's ranking.
    """
    fused, files = manifest['fused_decoder'], manifest['files']
    plain = [seg['layers'] for seg in Bundle(path, manifest).segments]
    try:
        parts = fused['segments']
        quantized = [k for k in ('decode_file', 'prefill_file') if k in fused]
        ok = (isinstance(parts, list) and [p['layers'] for p in parts] == plain
              and all(p['file'] in files and all(p[k] in files for k in quantized)
                      for p in parts)
              and float(fused['attention_scale']) > 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BundleError(f'bundle {str(path)!r}: manifest fused_decoder segments do not match '
                          'the decoder segments, a listed file, or an attention_scale: re-run '
                          'ros2-gmskip export')
