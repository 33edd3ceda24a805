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
The ONNX Runtime backend: an export bundle on CPU, CUDA or the TensorRT execution provider.

    backend = OrtBackend(Path('bundles/gmskip-8of16'), threads=2)          # CPU
    backend = OrtBackend(bundle, providers=['cuda'])           # CUDA EP (needs onnxruntime-gpu)
    result = backend.describe(rgb_uint8, 'describe the scene.')
    result.text, result.tokens, result.latency.decode_per_token_ms

One `describe`: preprocess (resize/normalise + cached prompt ids) -> vision.onnx -> merge the image
embeddings into the prompt's token embeddings (numpy lookup in embed_tokens.npy) -> decoder.onnx
prefill -> greedy decode with the KV cache (`decode.GreedyDecoder`) -> detokenise.

Decoder graph (`graph`): 'auto' runs decoder.fused.onnx (ORT contrib ops, KV cache updated in
place: `fused_decode.FusedDecoder`) where the bundle has one and it can run here (CPU execution
provider: the graph is fp32 and made for the CPU kernels; GPU providers, whose GroupQueryAttention
kernels are made for fp16 / bf16, are untested here), else decoder.onnx; 'fused' insists on the
fused graph, 'portable' insists on decoder.onnx (the graph TensorRT builds from).

A bundle exported with token skipping (FastV, visual KV removal: its manifest's `token_skip`) runs
them through `fused_token_decode.FusedTokenSkipDecoder` over its fused segments, or
`token_decode.TokenSkipDecoder` over its decoder.onnx segments (graph 'portable');
`token_skip=TokenSkip()` runs it without.

Speculative decoding (`draft_tokens`, default 4; 0 turns it off): where the bundle holds an n-gram
draft table (draft_ngrams.json, from `ros2-gmskip draft`) and its fused graph outputs
`all_logits`, fused decoding feeds up to `draft_tokens` guessed tokens per decoder run and
keeps those the model's greedy choice confirms: the same text in fewer runs (runtime/draft.py).
The fused token-skipping loop does the same; the portable loops decode one token per run.

Sessions use graph optimisation level ALL and, by default, ONNX Runtime's thread count; pass
`threads` to pin it (the node shares its cores with the rest of the stack).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from ros2_gmskip.errors import BundleError, EngineError
from ros2_gmskip.runtime.bundle import Bundle, load_bundle
from ros2_gmskip.runtime.bundle_backend import BundleBackend
from ros2_gmskip.runtime.decode import GreedyDecoder
from ros2_gmskip.runtime.draft import DRAFT_FILE, DRAFT_TOKENS, NgramDraft
from ros2_gmskip.runtime.fused_decode import FusedDecoder
from ros2_gmskip.runtime.fused_token_decode import FusedTokenSkipDecoder
from ros2_gmskip.runtime.preprocess import Preprocessor
from ros2_gmskip.runtime.token_decode import TokenSkipDecoder
from ros2_gmskip.runtime.tokenizer import PromptTokenizer
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

    EngineError listing the available ones if a requested provider is not in this onnxruntime
    build.
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
    `Backend` over an export bundle with ONNX Runtime.

    One `describe` at a time (the decode buffers are per backend): the node's single worker
    thread is the intended caller; use one backend per thread otherwise.
    """

    name = 'onnxruntime'

    def __init__(self, bundle_path: Path, providers: Sequence[str] | str | None = None,
                 threads: int | None = None, verify: bool = True,
                 token_skip: TokenSkip | None = None, graph: str = 'auto',
                 quantized: bool = True, draft_tokens: int = DRAFT_TOKENS) -> None:
        import onnxruntime as ort

        if graph not in GRAPHS:
            raise ValueError(f'graph must be one of {", ".join(GRAPHS)}, got {graph!r}')
        self.bundle: Bundle = load_bundle(Path(bundle_path), verify=verify)
        self.providers = resolve_providers(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3                  # errors only: no per-node warnings
        self.vision = self._session(self.bundle.vision_path, options)
        self.decoder = self._session(self.bundle.decoder_path, options)
        self.decoders = [self.decoder] + [self._session(self.bundle.file(seg['file']), options)
                                          for seg in self.bundle.segments[1:]]
        self.embed_table = np.load(self.bundle.embed_path, allow_pickle=False)   # (vocab, C)
        cfg = self.bundle.decoder_config
        if self.embed_table.shape != (cfg['vocab_size'], cfg['hidden_size']):
            raise BundleError(f'bundle {str(self.bundle.path)!r}: embed_tokens.npy has shape '
                              f'{self.embed_table.shape}, manifest says '
                              f'({cfg["vocab_size"]}, {cfg["hidden_size"]}): re-run '
                              'ros2-gmskip export')
        self.preprocess = Preprocessor.from_manifest(self.bundle.preprocess)
        self.tokenizer = PromptTokenizer.from_bundle(self.bundle)
        on_gpu = self.decoder.get_providers()[0] != 'CPUExecutionProvider'
        self.token_skip = self._token_skip(token_skip)
        device = 'cuda' if on_gpu else 'cpu'
        if self.token_skip.is_off and len(self.decoders) == 1:
            self.decoder_loop = GreedyDecoder(
                self.decoder, self.embed_table, num_layers=cfg['num_layers'],
                num_kv_heads=cfg['num_kv_heads'], head_dim=cfg['head_dim'],
                stop_ids=self.tokenizer.stop_ids, device=device)
        else:
            self.decoder_loop = TokenSkipDecoder(
                self.decoders, self.bundle.segments, self.embed_table,
                num_kv_heads=cfg['num_kv_heads'], head_dim=cfg['head_dim'],
                stop_ids=self.tokenizer.stop_ids, token_skip=self.token_skip,
                device=device, where=f'bundle {str(self.bundle.path)!r}')
        if draft_tokens < 0:
            raise ValueError(f'draft_tokens must be >= 0, got {draft_tokens}')
        self.draft_tokens = draft_tokens
        if self._use_fused(graph):                  # the portable loop stays, for long requests
            self.decoder_loop = self._fused_loop(options, quantized)
        plan = self.bundle.plan or {}
        self.info = {
            'backend': self.name,
            'bundle': str(self.bundle.path),
            'model_sha256': self.bundle.model_sha256,
            'plan_sha256': plan.get('sha256'),
            'plan_id': plan.get('id'),
            'blocks_removed': list(plan.get('removed_blocks') or []),
            'num_layers': cfg['num_layers'],
            'tokens': self.token_skip.to_dict(),
            'decoder_graph': self._graph_name(),
            'providers': self.decoder.get_providers(),
            'threads': threads,
            'draft_tokens': self.draft_tokens if getattr(self.decoder_loop, 'speculative', False)
            else 0,
        }
        log.info('onnxruntime backend: %s, %d decoder layers, providers %s', self.bundle.path,
                 cfg['num_layers'], ', '.join(self.info['providers']))

    def _fused_loop(self, options, quantized: bool) -> FusedDecoder | FusedTokenSkipDecoder:
        """
        Return the decode loop over the fused graph(s), the portable loop as its fallback.

        `quantized`: the bundle's quantized prefill / decode-step copies where it has them.
        """
        fused, cfg = self.bundle.fused_decoder, self.bundle.decoder_config
        prefill_key = 'prefill_file' if quantized and fused.get('prefill_file') else 'file'
        step_key = 'decode_file' if quantized and fused.get('decode_file') else None
        self._fused_keys = prefill_key, step_key
        parts = fused.get('segments')
        if parts is None:
            return FusedDecoder(
                self._session(self.bundle.file(fused[prefill_key]), options), self.embed_table,
                num_layers=cfg['num_layers'], num_kv_heads=cfg['num_kv_heads'],
                head_dim=cfg['head_dim'], max_length=fused['max_length'],
                stop_ids=self.tokenizer.stop_ids, fallback=self.decoder_loop,
                step_session=(self._session(self.bundle.file(fused[step_key]), options)
                              if step_key else None),
                draft=self._draft(), draft_tokens=self.draft_tokens)
        steps = None
        if step_key:
            steps = [self._session(self.bundle.file(p[step_key]), options) for p in parts]
        return FusedTokenSkipDecoder(
            [self._session(self.bundle.file(p[prefill_key]), options) for p in parts], fused,
            self.embed_table, num_kv_heads=cfg['num_kv_heads'], head_dim=cfg['head_dim'],
            stop_ids=self.tokenizer.stop_ids, token_skip=self.token_skip,
            fallback=self.decoder_loop, step_sessions=steps,
            where=f'bundle {str(self.bundle.path)!r}', draft=self._draft(),
            draft_tokens=self.draft_tokens)

    def _draft(self) -> NgramDraft | None:
        """Return the bundle's draft table, if it has one and drafts are asked for."""
        if self.draft_tokens == 0:
            return None
        path = self.bundle.file(DRAFT_FILE)
        if not path.is_file():
            log.info('bundle %s has no %s: decoding one token per run (ros2-gmskip draft '
                     'builds the table next to the model; export again after it)',
                     self.bundle.path, DRAFT_FILE)
            return None
        return NgramDraft.load(path, vocab_size=self.embed_table.shape[0])

    def _graph_name(self) -> str:
        """'portable', 'fused', or e.g. 'fused, int8 prefill, int4 decode steps'."""
        if not isinstance(self.decoder_loop, (FusedDecoder, FusedTokenSkipDecoder)):
            return 'portable'
        prefill_key, step_key = self._fused_keys
        fused = self.bundle.fused_decoder
        return ', '.join(['fused'] + (['int8 prefill'] if prefill_key == 'prefill_file' else [])
                         + ([f'{fused["decode_weights"]} decode steps'] if step_key else []))

    def _use_fused(self, graph: str) -> bool:
        """Whether plain decoding runs decoder.fused.onnx (`graph` as in the module docstring)."""
        if graph == 'portable':
            return False
        problem = None
        fused = self.bundle.fused_decoder
        if fused is None:
            problem = 'has no fused decoder graph (exported before it existed, or a model it ' \
                      'does not cover): re-run ros2-gmskip export'
        elif 'segments' not in fused and not (self.token_skip.is_off and
                                              len(self.bundle.segments) == 1):
            problem = 'skips tokens (FastV / KV removal), and its fused decoder was exported ' \
                      'without token skipping: export the bundle with these settings, or use ' \
                      'graph auto or portable'
        elif self.providers[0] != 'CPUExecutionProvider':
            problem = f'has a fused decoder made for the CPU execution provider (fp32), not ' \
                      f'{self.providers[0]}: use graph auto or portable'
        if problem and graph == 'fused':
            raise BundleError(f'bundle {str(self.bundle.path)!r} {problem}')
        return problem is None

    def _token_skip(self, override: TokenSkip | None) -> TokenSkip:
        """
        Return the bundle's token-skip settings, or `override`.

        E.g. TokenSkip() runs a token-skip bundle unpruned; TokenSkipDecoder refuses an override
        the bundle's split graphs cannot run.
        """
        try:
            exported = TokenSkip.from_dict(self.bundle.token_skip)
        except ValueError as err:
            raise BundleError(f'bundle {str(self.bundle.path)!r}: manifest token_skip: {err}: '
                              're-run ros2-gmskip export') from None
        return exported if override is None else override

    def _session(self, path: Path, options):
        import onnxruntime as ort
        try:
            return ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(err).splitlines()[0] if str(err) else ''
            raise BundleError(f'bundle {str(self.bundle.path)!r}: onnxruntime cannot load '
                              f'{path.name} ({type(err).__name__}: {first[:200]}): re-run '
                              'ros2-gmskip export') from err

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        """vision.onnx: (B, 3, H, W) -> (B, n_image_tokens, C)."""
        return self.vision.run(None, {'pixel_values': pixel_values})[0]
