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

"""The backend contract: every backend returns one `Result` with the same latency breakdown."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ros2_gmskip.tokenskip.settings import TokenSkip

DEFAULT_PROMPT = 'describe the scene.'


@dataclass
class Latency:
    """Milliseconds per stage of one `describe` call (wall clock, perf_counter)."""

    preprocess_ms: float = 0.0   # image resize/normalise + prompt tokenisation
    vision_ms: float = 0.0       # vision tower + projector
    prefill_ms: float = 0.0      # decoder over the prompt (image tokens + text)
    decode_ms: float = 0.0       # all decode steps after the first token
    total_ms: float = 0.0        # whole call, including detokenisation
    decode_tokens: int = 0       # steps that `decode_ms` covers

    @property
    def decode_per_token_ms(self) -> float:
        return self.decode_ms / self.decode_tokens if self.decode_tokens else 0.0

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d['decode_per_token_ms'] = self.decode_per_token_ms
        return d


@dataclass
class Result:
    """Text generated for one image, with how long each stage took."""

    text: str
    tokens: int                       # tokens generated (stop token excluded)
    latency: Latency = field(default_factory=Latency)

    def to_dict(self) -> dict:
        return {'text': self.text, 'tokens': self.tokens, 'latency': self.latency.to_dict()}


@dataclass(frozen=True)
class BackendInfo:
    """
    Say what a backend runs: ids that mean the same on every backend, then how it runs it.

    model_id   the weights: first 12 hex digits of the sha256 over the model's *.safetensors
               (gmskip.plan.weights_sha256), whichever backend loaded them
    plan_id    the skip plan: its gmskip.plan.plan_id (12 hex digits of its content); 'full'
               for the unpruned model; 'blocks:1,3' for blocks removed without a plan file
    engine_id  the exported artifact that runs: the bundle's id (first 12 hex digits of its
               manifest.json's sha256) on onnxruntime, the engines' cache key on tensorrt,
               '' for torch (nothing exported)
    """

    backend: str                          # 'onnxruntime' | 'tensorrt' | 'torch' | 'fake'
    model_id: str
    plan_id: str
    engine_id: str
    blocks_removed: tuple[int, ...] = ()
    num_layers: int = 0                   # decoder blocks that run
    tokens: TokenSkip = TokenSkip()       # FastV / visual KV removal applied
    decoder_graph: str = ''               # e.g. 'fused, int8 prefill, int4 decode steps'
    draft_tokens: int = 0                 # guesses checked per decoder run (0: greedy)
    device: str = 'cpu'
    details: dict[str, Any] = field(default_factory=dict)   # per backend: paths, threads, ...

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (describe --json, the replay summary)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != 'details'}
        out['blocks_removed'] = list(self.blocks_removed)
        out['tokens'] = self.tokens.to_dict()
        return {**out, **self.details}


@runtime_checkable
class Backend(Protocol):
    """Anything that turns an RGB image into a description (torch, onnxruntime, tensorrt)."""

    name: str            # 'torch' | 'onnxruntime' | 'tensorrt'
    info: BackendInfo    # shown in diagnostics and in every scene JSON

    def describe(self, image: np.ndarray, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 48) -> Result:
        """`image`: RGB uint8 (H, W, 3), any size; raises ImageError for anything else."""
        ...
