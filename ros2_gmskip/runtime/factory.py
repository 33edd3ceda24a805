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
One place that turns a backend name into a `Backend`: what the node, `describe` and `bench` call.

    backend = create_backend('onnxruntime', bundle=Path('bundles/pruned'), threads=2)
    backend = create_backend('torch', model=Path('models/gmskip-llava-scenes'), plan=plan)
    backend = create_backend('tensorrt', engine=Path('engines/pruned'), bundle=bundle)
    backend = create_backend('fake:25')      # tests/demos: no model, sleeps 25 ms per describe
    backend = create_backend('onnxruntime')  # embedded default model + shipped plan, cached

Heavy modules load lazily: 'torch' imports `ros2_gmskip.vlm.torch_backend` (torch, transformers)
only when asked for, 'tensorrt' imports `ros2_gmskip.runtime.trt_backend` (tensorrt); importing
this module imports neither.
"""

from __future__ import annotations

import importlib
from pathlib import Path
import time

import numpy as np
from ros2_gmskip.errors import EngineError, GmSkipError
from ros2_gmskip.runtime.preprocess import check_image
from ros2_gmskip.runtime.results import Backend, BackendInfo, DEFAULT_PROMPT, Latency, Result

KINDS = ('onnxruntime', 'torch', 'tensorrt', 'fake:MS')


class FakeBackend:
    """
    A backend FOR TESTS AND DEMOS WITHOUT A MODEL.

    It checks the image like a real backend, sleeps `ms` milliseconds, and returns a fixed
    description with a plausible latency split. Never use its output as a measurement of
    anything but the pipeline around the backend.
    """

    name = 'fake'

    def __init__(self, ms: float = 0.0, text: str = 'a car ahead, clear day.') -> None:
        if ms < 0:
            raise GmSkipError(f'fake backend delay must be >= 0 ms, got {ms}')
        self.ms = float(ms)
        self.text = text
        self.info = BackendInfo(backend=self.name, model_id='', plan_id='', engine_id='',
                                details={'delay_ms': self.ms})

    def describe(self, image: np.ndarray, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 48) -> Result:
        t0 = time.perf_counter()
        check_image(image)
        if self.ms:
            time.sleep(self.ms / 1e3)
        total_ms = (time.perf_counter() - t0) * 1e3
        tokens = min(len(self.text.split()), max_new_tokens)
        latency = Latency(preprocess_ms=0.05 * total_ms, vision_ms=0.25 * total_ms,
                          prefill_ms=0.2 * total_ms, decode_ms=0.5 * total_ms, total_ms=total_ms,
                          decode_tokens=max(tokens - 1, 0))
        return Result(text=self.text, tokens=tokens, latency=latency)


def _fake(kind: str) -> FakeBackend:
    _, _, ms = kind.partition(':')
    try:
        return FakeBackend(float(ms or 0))
    except ValueError:
        raise GmSkipError(f'bad fake backend {kind!r}: expected fake:MS, e.g. fake:25') from None


def create_backend(kind: str, model: Path | None = None, plan: Path | None = None,
                   bundle: Path | None = None, engine: Path | None = None,
                   build_only: bool = False, **opts) -> Backend:
    """
    Return a ready backend of `kind` ('onnxruntime' | 'torch' | 'tensorrt' | 'fake:MS').

    Missing paths mean the embedded default (`runtime.defaults`): the default model with its
    shipped skip plan (unless `full=True` or a `plan` is given), and for onnxruntime / tensorrt
    the ONNX bundle of (model, plan), exported once into the cache by a subprocess if missing.

    onnxruntime: `bundle` (from `ros2-gmskip export`; the plan is baked into it); opts `providers`
                 ('cpu', 'cuda', 'tensorrt'), `threads`, `graph` ('auto' | 'fused' | 'portable':
                 which decoder graph, see ort_backend), `draft_tokens` (speculative decoding,
                 0 = off); without a bundle, `fused_weights`
                 ('int4' | 'int8') exports the quantized fused decoder (export --fused-weights).
    torch:       `model`, `plan`; opts `device`, `threads`.
    `ladder` (the plan's ladder file): a backend that runs any rung per request,
    `describe(..., rung=i)`: torch from one copy of the weights; onnxruntime / tensorrt from a
    ladder bundle (`export --ladder`, exported into the cache here; a given bundle brings its
    own ladder, or none).
    `tokens` (a tokenskip.settings.TokenSkip): FastV / KV-removal settings instead of the plan's
    (TokenSkip() turns them off); a bundle made here is exported with them.
    tensorrt:    `engine` and/or `bundle`, `build_only`; other opts go to
                 `ros2_gmskip.runtime.trt_backend.TrtBackend` (device, precision, ...).
    """
    if kind.startswith('fake'):
        return _fake(kind)
    if kind not in ('onnxruntime', 'torch', 'tensorrt'):
        raise GmSkipError(f'unknown backend {kind!r}: expected one of {", ".join(KINDS)}')
    full = bool(opts.pop('full', False))
    tokens = opts.pop('tokens', None)            # TokenSkip; None: the plan's / bundle's own
    fused_weights = opts.pop('fused_weights', 'fp32')
    if fused_weights != 'fp32' and (kind != 'onnxruntime' or bundle is not None):
        raise GmSkipError(f'fused_weights {fused_weights} quantizes the cached ONNX export of the '
                          'onnxruntime backend; a given bundle carries its own (export it with '
                          '--fused-weights) and other backends have none')
    model = Path(model) if model else None
    plan = Path(plan) if plan else None
    ladder = opts.pop('ladder', None)
    if kind == 'torch':
        from ros2_gmskip.runtime import defaults
        if model is None:
            model = defaults.default_model_dir()
            if plan is None and not full:
                plan = defaults.default_plan_path()
        module = importlib.import_module('ros2_gmskip.vlm.torch_backend')
        return module.TorchBackend(model, plan=plan, tokens=tokens, ladder=ladder,
                                   **{k: v for k, v in opts.items()
                                      if k in ('device', 'threads')})
    exported = bundle is None
    if bundle is None and not (kind == 'tensorrt' and engine is not None):
        from ros2_gmskip.runtime import defaults
        bundle = defaults.ensure_bundle(model, plan, full=full, tokens=tokens,
                                        fused_weights=fused_weights,
                                        **({'ladder': Path(ladder)} if ladder else {}))
    if kind == 'onnxruntime':
        from ros2_gmskip.runtime.ort_backend import OrtBackend
        return OrtBackend(Path(bundle), providers=opts.get('providers'),
                          threads=opts.get('threads'), token_skip=None if exported else tokens,
                          graph=opts.get('graph') or 'auto',
                          **{k: opts[k] for k in ('draft_tokens',) if k in opts})
    try:
        module = importlib.import_module('ros2_gmskip.runtime.trt_backend')
    except ModuleNotFoundError as err:
        raise EngineError(f'the tensorrt backend is not available ({err.name} is not '
                          'installed): use --backend onnxruntime, or install TensorRT') from err
    return module.TrtBackend(engine=Path(engine) if engine else None,
                             bundle=Path(bundle) if bundle else None, build_only=build_only,
                             token_skip=None if exported else tokens, **opts)
