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
Run an export bundle with ONNX Runtime: on the CPU, CUDA or the TensorRT execution provider.

    backend = OrtBackend(Path('bundles/pruned'), threads=2)              # CPU
    backend = OrtBackend(bundle, providers=['cuda'])          # CUDA EP (needs onnxruntime-gpu)
    result = backend.describe(rgb_uint8, 'describe the scene.')

One `describe` (bundle_backend.BundleBackend): preprocess -> vision.onnx -> the image embeddings
merged into the prompt's token embeddings -> the decode loop (runtime/decode.py) over one runner
per decoder segment (runtime/ort_runners.py) -> detokenise.

Decoder graph (`graph`): 'fused' runs the fused graphs (ONNX Runtime contrib ops, KV cache in
place; their quantized copies where the bundle has them, unless `quantized=False`), 'portable' the
plain-op graphs (what TensorRT builds from), 'auto' the fused ones where the bundle has them and
they can run here: on the CPU execution provider (they are fp32 and made for its kernels; the GPU
GroupQueryAttention kernels want fp16 / bf16 and are untested here), and with these token
settings (a plain bundle's fused graph rotates at the cache length, so it cannot skip tokens).
The portable runners are kept for requests longer than the fused graphs' KV buffers.

Token skipping (FastV, visual KV removal) is the bundle's own (`Manifest.token_skip`) unless
`token_skip` says otherwise (TokenSkip() turns it off); the loop refuses settings the bundle's
segments cannot run. Speculative decoding (`draft_tokens`, default 4; 0 turns it off) uses the
bundle's n-gram draft table where it has one (runtime/draft.py).

Sessions use graph optimisation level ALL and, by default, ONNX Runtime's thread count; pass
`threads` to pin it (the node shares its cores with the rest of the stack).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from ros2_gmskip.bundle_format import Bundle, load_bundle, VISION
from ros2_gmskip.errors import BundleError, EngineError
from ros2_gmskip.runtime import qwen
from ros2_gmskip.runtime.bundle_backend import BundleBackend
from ros2_gmskip.runtime.decode import DecodeLoop
from ros2_gmskip.runtime.draft import DRAFT_TOKENS, NgramDraft
from ros2_gmskip.runtime.ort_runners import FusedRunner, PortableRunner
from ros2_gmskip.runtime.results import BackendInfo
from ros2_gmskip.tokenskip.settings import TokenSkip

log = logging.getLogger(__name__)

GRAPHS = ('auto', 'fused', 'portable')

# Short names accepted in `providers` -> ONNX Runtime execution providers.
PROVIDERS = {
    'cpu': 'CPUExecutionProvider',
    'cuda': 'CUDAExecutionProvider',
    'tensorrt': 'TensorrtExecutionProvider',
}


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """
    Return the execution providers to ask ONNX Runtime for, CPU last as the fallback.

    EngineError listing the available ones if a requested provider is not in this build.
    """
    import onnxruntime as ort

    if providers is None:
        providers = ['cpu']
    elif isinstance(providers, str):
        providers = [p for p in providers.split(',') if p]
    available = ort.get_available_providers()
    resolved: list[str] = []
    for p in providers:
        name = PROVIDERS.get(p.lower(), p)
        if name not in available:
            raise EngineError(f'onnxruntime execution provider {p!r} ({name}) is not available in '
                              f'this onnxruntime build: available are {", ".join(available)} '
                              '(CUDA / TensorRT need the onnxruntime-gpu package)')
        if name not in resolved:
            resolved.append(name)
    if ('TensorrtExecutionProvider' in resolved and 'CUDAExecutionProvider' in available
            and 'CUDAExecutionProvider' not in resolved):
        resolved.insert(resolved.index('TensorrtExecutionProvider') + 1,
                        'CUDAExecutionProvider')                  # for nodes TensorRT leaves out
    if 'CPUExecutionProvider' not in resolved:
        resolved.append('CPUExecutionProvider')
    return resolved


class OrtBackend(BundleBackend):
    """
    Describe images with an export bundle in ONNX Runtime (`Backend`).

    One `describe` at a time (the runners' caches are per backend): the node's single worker
    thread is the intended caller; use one backend per thread otherwise.
    """

    name = 'onnxruntime'

    def __init__(self, bundle_path: Path, providers: Sequence[str] | str | None = None,
                 threads: int | None = None, verify: bool = True,
                 token_skip: TokenSkip | None = None, graph: str = 'auto',
                 quantized: bool = True, draft_tokens: int = DRAFT_TOKENS) -> None:
        if graph not in GRAPHS:
            raise ValueError(f'graph must be one of {", ".join(GRAPHS)}, got {graph!r}')
        if draft_tokens < 0:
            raise ValueError(f'draft_tokens must be >= 0, got {draft_tokens}')
        import onnxruntime as ort

        self.bundle: Bundle = load_bundle(Path(bundle_path), verify=verify)
        m = self.bundle.manifest
        self.providers = resolve_providers(providers)
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            self.options.intra_op_num_threads = int(threads)
            self.options.inter_op_num_threads = 1
        self.options.log_severity_level = 3                  # errors only: no per-node warnings
        self.vision = self._session(self.bundle.file(VISION))
        self._load_parts()                       # embed_table, preprocess, tokenizer
        self.token_skip = m.token_skip if token_skip is None else token_skip
        qwen.check_token_skip(m, self.token_skip, self.bundle.where())
        self.portable = [PortableRunner(self._session(self.bundle.file(seg.portable)), seg,
                                        m.decoder.num_kv_heads, m.decoder.head_dim,
                                        device=self.device)
                         for seg in m.segments]
        draft = self._draft(draft_tokens)
        stop = self.tokenizer.stop_ids

        def loops(runners: list, fallback: list | None = None) -> list[DecodeLoop]:
            # one loop over the segments; a ladder bundle: one per rung, over its own segments
            def make(views: list, rung: int) -> DecodeLoop:
                return DecodeLoop(views, self.embed_table, stop, self.token_skip, draft,
                                  draft_tokens, fallback=fallback[rung] if fallback else None,
                                  where=self.bundle.where())
            return self._rung_loops(runners, make)

        portable = loops(self.portable)
        self.graph = 'portable'
        self.rung_loops, self.runners = portable, self.portable   # every segment's runner
        if self._use_fused(graph):
            self.graph = self._fused_name(quantized)
            self.runners = self._fused_runners(quantized)
            self.rung_loops = loops(self.runners, portable)
        self.decoder_loop = self.rung_loops[self.ladder.plan_rung if self.ladder else 0]
        self.info = BackendInfo(
            backend=self.name, model_id=m.model_id, plan_id=m.plan_id,
            engine_id=self.bundle.bundle_id, blocks_removed=tuple(m.blocks_removed),
            num_layers=m.decoder.num_layers, tokens=self.token_skip, decoder_graph=self.graph,
            draft_tokens=self.decoder_loop.draft_tokens, device=self.device,
            details={'bundle': str(self.bundle.path), 'providers': self.vision.get_providers(),
                     'threads': threads})
        log.info('onnxruntime backend: %s, %d decoder layers in %d segment(s), %s graph, '
                 'providers %s%s', self.bundle.path, m.decoder.num_layers, len(m.segments),
                 self.graph, ', '.join(self.vision.get_providers()),
                 f', {len(self.ladder.rungs)} ladder rungs' if self.ladder else '')

    @property
    def device(self) -> str:
        """Return 'cpu', or 'cuda' where a GPU provider comes first."""
        return 'cpu' if self.providers[0] == 'CPUExecutionProvider' else 'cuda'

    def _use_fused(self, graph: str) -> bool:
        """Return whether to run the fused graphs (`graph` as in the module docstring)."""
        if graph == 'portable':
            return False
        fused = self.bundle.manifest.fused
        problem = None
        if fused is None:
            problem = ('has no fused decoder graph (a model the fused graph does not cover, or '
                       'exported with --no-fused): re-run ros2-gmskip export')
        elif fused.positions == 'cache' and not self.token_skip.is_off:
            problem = (f'skips tokens ({self.token_skip.describe()}) and its fused decoder was '
                       'exported without token skipping: export the bundle with these '
                       'settings, or use graph auto or portable')
        elif self.device != 'cpu':
            problem = (f'has a fused decoder made for the CPU execution provider (fp32), not '
                       f'{self.providers[0]}: use graph auto or portable')
        if problem and graph == 'fused':
            raise BundleError(f'{self.bundle.where()} {problem}')
        return problem is None

    def _fused_runners(self, quantized: bool) -> list[FusedRunner]:
        """Return one FusedRunner per segment (their quantized graphs where `quantized`)."""
        m = self.bundle.manifest
        runners = []
        for seg in m.segments:
            prefill = seg.fused_prefill if quantized and seg.fused_prefill else seg.fused
            step = seg.fused_step if quantized and seg.fused_step else seg.fused
            prefill_session = self._session(self.bundle.file(prefill))
            step_session = (prefill_session if step == prefill
                            else self._session(self.bundle.file(step)))
            runners.append(FusedRunner(seg, prefill_session, step_session, m.fused.positions,
                                       m.fused.max_length, m.decoder.num_kv_heads,
                                       m.decoder.head_dim, m.fused.attention_scale))
        return runners

    def _fused_name(self, quantized: bool) -> str:
        """Return 'fused', or e.g. 'fused, int8 prefill, int4 decode steps'."""
        fused = self.bundle.manifest.fused
        parts = ['fused']
        if quantized and fused.prefill_weights != 'fp32':
            parts.append(f'{fused.prefill_weights} prefill')
        if quantized and fused.step_weights != 'fp32':
            parts.append(f'{fused.step_weights} decode steps')
        return ', '.join(parts)

    def _draft(self, draft_tokens: int) -> NgramDraft | None:
        """Return the bundle's draft table, if it has one and drafts are asked for."""
        name = self.bundle.manifest.draft
        if draft_tokens == 0:
            return None
        if name is None:
            log.info('bundle %s has no draft table: decoding one token per run (ros2-gmskip '
                     'draft builds it next to the model; export again after it)',
                     self.bundle.path)
            return None
        return NgramDraft.load(self.bundle.file(name), vocab_size=self.embed_table.shape[0])

    def _session(self, path: Path):
        import onnxruntime as ort
        try:
            return ort.InferenceSession(str(path), self.options, providers=self.providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(err).splitlines()[0] if str(err) else ''
            raise BundleError(f'{self.bundle.where()}: onnxruntime cannot load {path.name} '
                              f'({type(err).__name__}: {first[:200]}): re-export it with '
                              'ros2-gmskip export') from err

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        """Run vision.onnx: (B, 3, H, W) -> (B, n_image_tokens, C)."""
        return self.vision.run(None, {'pixel_values': pixel_values})[0]
