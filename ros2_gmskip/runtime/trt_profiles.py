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
TensorRT optimization profiles for a bundle's graphs, engine file names and the engine cache key.

Pure Python (no tensorrt): the builder turns these into `IOptimizationProfile.set_shape` calls,
the runtime reads them back from `engine_manifest.json` to size its buffers, and the tests check
them by hand. The graphs' input shapes come from the bundle manifest's `graphs` entry, whose
dynamic axes carry names (`batch`, `seq`, `past`, `total` = past + seq); each profile gives every
named axis a (min, opt, max) and keeps fixed axes as they are.

    vision   batch 1 / 1 / max_batch; H, W fixed
    decoder  (each segment: decoder, decoder.1, ...)
             profile 0 "prefill": the whole prompt, empty KV cache
                 seq   1 / P / max_prompt          P = num_image_tokens + prompt text tokens
                 past  0 / 0 / 0
             profile 1 "decode": one token, growing KV cache
                 seq   1 / 1 / 1
                 past  1 / P + max_new_tokens // 2 / max_prompt + max_new_tokens
             total = past + seq in both (attention_mask)

Why past 0 in the prefill profile: TensorRT 10 accepts 0-length dimensions in a profile
(`IOptimizationProfile.set_shape` requires `0 <= min[i] <= opt[i] <= max[i]`) and runs empty
tensors; the exported decoder's prefill is exactly "past of length 0", as in onnxruntime. So there
is no dummy masked KV slot, and prefill and decode see the same positions and masks as the torch
reference. (The empty past still needs a valid device address: the backend binds its preallocated
KV buffers, so it always has one.)

Why two profiles: one kernel choice cannot be best for both a 200-token prompt and a 1-token step;
a profile per phase lets TensorRT tune each (the decode profile is the one run `max_new_tokens`
times per frame). The runtime keeps one execution context per profile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
import hashlib
import json
import re

from ros2_gmskip.bundle_format import BATCH, Manifest, PAST, REEXPORT, SEQ, TensorSpec, TOTAL
from ros2_gmskip.errors import EngineError

PREFILL, DECODE, VISION = 'prefill', 'decode', 'vision'
_GRAPH = re.compile(r'^(vision|decoder(\.[1-9][0-9]*)?)$')   # vision and each segment's name


def graph_names(manifest: Manifest) -> tuple[str, ...]:
    """Return the graphs engines are built for: vision, then each decoder segment."""
    return (VISION, *(seg.name for seg in manifest.segments))


class Precision(str, Enum):
    """Engine precisions `build-engine --precision` accepts (the value is the file-name tag)."""

    FP16 = 'fp16'
    BF16 = 'bf16'
    INT8 = 'int8'
    FP32 = 'fp32'


PRECISIONS = tuple(p.value for p in Precision)


def parse_precision(value: str | Precision) -> Precision:
    try:
        return Precision(str(getattr(value, 'value', value)).lower())
    except ValueError:
        raise EngineError(f'unknown precision {value!r}: expected one of '
                          f'{", ".join(PRECISIONS)}') from None


def engine_file_name(graph: str, precision: str | Precision) -> str:
    """
    Return the engine file name `<graph>.<precision>.engine`, e.g. `decoder.fp16.engine`.

    Autoware keeps the precision in the engine's name, so engines of two precisions can sit side
    by side.
    """
    if not _GRAPH.match(graph):
        raise EngineError(f'unknown graph {graph!r}: expected vision or a decoder segment '
                          '(decoder, decoder.1, ...)')
    return f'{graph}.{parse_precision(precision).value}.engine'


@dataclass(frozen=True)
class Limits:
    """The user's limits the engines are built for (`build-engine --max-*`)."""

    max_batch: int = 1          # images per call
    max_prompt: int = 128       # prompt tokens, image tokens included
    max_new_tokens: int = 48    # generated tokens per call

    def __post_init__(self) -> None:
        for name in ('max_batch', 'max_prompt', 'max_new_tokens'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise EngineError(f'{name.replace("_", "-")} must be a positive integer, '
                                  f'got {value!r}')

    @property
    def max_total(self) -> int:
        """Return the longest attention span a decode step can see (past + the new token)."""
        return self.max_prompt + self.max_new_tokens + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'Limits':
        return cls(**{k: int(d[k]) for k in ('max_batch', 'max_prompt', 'max_new_tokens')})


@dataclass(frozen=True)
class ShapeRange:
    """
    (min, opt, max) of one input, as `IOptimizationProfile.set_shape(name, min, opt, max)`.

    The fields carry a `_shape` suffix (as trtexec's --minShapes) so as not to shadow the
    builtins; the manifest keys stay 'min', 'opt', 'max'.
    """

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        lo, mid, hi = self.min_shape, self.opt_shape, self.max_shape
        assert len(lo) == len(mid) == len(hi), self
        assert all(0 <= a <= b <= c for a, b, c in zip(lo, mid, hi)), self

    def to_dict(self) -> dict:
        return {'min': list(self.min_shape), 'opt': list(self.opt_shape),
                'max': list(self.max_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> 'ShapeRange':
        return cls(tuple(d['min']), tuple(d['opt']), tuple(d['max']))


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a name and the shape range of every input of the graph."""

    name: str
    shapes: dict[str, ShapeRange]

    def to_dict(self) -> dict:
        return {'name': self.name, 'shapes': {k: v.to_dict() for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> 'Profile':
        return cls(d['name'], {k: ShapeRange.from_dict(v) for k, v in d['shapes'].items()})


def _graph_inputs(manifest: Manifest, graph: str) -> tuple[TensorSpec, ...]:
    spec = manifest.graphs.get(graph)
    if spec is None or not spec.inputs:
        raise EngineError(f'bundle manifest lists no inputs for the {graph} graph: {REEXPORT}')
    return spec.inputs


def _fill(graph: str, spec: TensorSpec, axes: dict[str, tuple[int, int, int]]) -> ShapeRange:
    """Return the range of input `spec` with its named axes replaced from `axes`."""
    lo, mid, hi = [], [], []
    for axis in spec.shape:
        if isinstance(axis, int) and not isinstance(axis, bool):
            if axis < 0:
                raise EngineError(f'{graph} input {spec.name!r} has an unnamed dynamic axis '
                                  f'in {list(spec.shape)}: {REEXPORT}')
            values = (axis, axis, axis)
        elif axis in axes:
            values = axes[axis]
        else:
            raise EngineError(f'{graph} input {spec.name!r} has a dynamic axis {axis!r} '
                              f'this builder does not know (known: {", ".join(sorted(axes))}): '
                              f'{REEXPORT}')
        for out, v in zip((lo, mid, hi), values):
            out.append(int(v))
    return ShapeRange(tuple(lo), tuple(mid), tuple(hi))


def vision_profiles(manifest: Manifest, limits: Limits) -> list[Profile]:
    """Return the vision graph's one profile: batch 1 / 1 / max_batch, the image size fixed."""
    axes = {BATCH: (1, 1, limits.max_batch)}
    return [Profile(VISION, {s.name: _fill(VISION, s, axes)
                             for s in _graph_inputs(manifest, VISION)})]


def decoder_profiles(manifest: Manifest, limits: Limits, prompt_len: int,
                     graph: str = 'decoder') -> list[Profile]:
    """
    Return a decoder segment's [prefill, decode] profiles (see the module docstring).

    `prompt_len` is the prompt the engine is tuned for: image tokens + the default prompt's text
    tokens. Every segment gets the same ranges (a segment after FastV sees fewer rows).
    """
    num_image_tokens = manifest.tokens.num_image_tokens
    if prompt_len < max(num_image_tokens, 1):
        raise EngineError(f'prompt length {prompt_len} is shorter than the image tokens '
                          f'({num_image_tokens}): the prompt must hold the image')
    if prompt_len > limits.max_prompt:
        raise EngineError(f'--max-prompt {limits.max_prompt} is shorter than the prompt the '
                          f'engine must take ({num_image_tokens} image tokens + '
                          f'{prompt_len - num_image_tokens} text tokens = {prompt_len}): '
                          f'raise --max-prompt to at least {prompt_len}')
    P, N = prompt_len, limits.max_new_tokens
    batch = (1, 1, limits.max_batch)
    prefill = {BATCH: batch, SEQ: (1, P, limits.max_prompt), PAST: (0, 0, 0),
               TOTAL: (1, P, limits.max_prompt)}
    past_max = limits.max_prompt + N
    past_opt = min(max(P + N // 2, 1), past_max)
    decode = {BATCH: batch, SEQ: (1, 1, 1), PAST: (1, past_opt, past_max),
              TOTAL: (2, past_opt + 1, past_max + 1)}
    inputs = _graph_inputs(manifest, graph)
    return [Profile(PREFILL, {s.name: _fill(graph, s, prefill) for s in inputs}),
            Profile(DECODE, {s.name: _fill(graph, s, decode) for s in inputs})]


def build_profiles(manifest: Manifest, limits: Limits, prompt_len: int
                   ) -> dict[str, list[Profile]]:
    """Return {graph: [profiles]} for vision and every segment, in build order."""
    return {VISION: vision_profiles(manifest, limits),
            **{seg.name: decoder_profiles(manifest, limits, prompt_len, seg.name)
               for seg in manifest.segments}}


def profiles_to_dict(profiles: dict[str, list[Profile]]) -> dict[str, list[dict]]:
    return {graph: [p.to_dict() for p in ps] for graph, ps in profiles.items()}


def profiles_from_dict(d: dict) -> dict[str, list[Profile]]:
    return {graph: [Profile.from_dict(p) for p in ps] for graph, ps in d.items()}


def cache_key(*, source_onnx_sha256: dict[str, str], precision: str | Precision, limits: Limits,
              prompt_len: int, tensorrt_version: str, compute_capability: str | None,
              dla_core: int | None) -> str:
    """
    Return what an engine build depends on, as 16 hex digits.

    The graphs (their hashes), precision, profiles (limits + tuned prompt length), TensorRT
    version, GPU architecture and DLA core.
    Two builds with the same key make interchangeable engines; a different key means rebuild.
    (Workspace and timing cache change build time / tactic choice, not what the engine runs.)
    """
    payload = {
        'onnx': dict(sorted(source_onnx_sha256.items())),
        'precision': parse_precision(precision).value,
        'limits': limits.to_dict(),
        'prompt_len': int(prompt_len),
        'tensorrt': str(tensorrt_version),
        'compute_capability': compute_capability,
        'dla_core': dla_core,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(',', ':')).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
