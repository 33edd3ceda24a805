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
The PyTorch reference backend: the Hugging Face model (optionally GM-Skip pruned), greedy decode.

    backend = TorchBackend(Path('models/gmskip-llava-scenes'), plan=Path('plans/reverse.json'))
    result = backend.describe(rgb_uint8)    # same Result / Latency as the ONNX and TensorRT ones

Its own loop rather than `generate`, so the time splits into the same stages as the other backends
(preprocess, vision, prefill, decode) and the semantics match `runtime.decode` exactly: greedy
argmax, KV cache (the model's own `past_key_values`), at most `max_new_tokens` tokens, stop token
excluded. Text equals transformers' greedy `generate` for every family (test_families.py checks
it). What differs between families is read from `vlm.families`: the vision inputs, the explicit
position ids (M-RoPE for Qwen, 1-based for PaliGemma), the token types; the model's own forward
merges the precomputed image features (`mm_encoder_outputs`).

Token skipping (FastV, visual KV removal; `tokens=` or the plan's `tokens`) cannot use the model's
own forward: it changes the token set inside the decoder. It runs tokenskip's functional decoder
instead, stage by stage so the breakdown stays comparable: vision = `embed_inputs` (vision tower,
projector and the merge into the token embeddings), prefill = FastV prefill plus the KV removal
that follows it and the first token, decode = the remaining greedy steps.

With a plan ladder (`ladder=`, gmskip/ladder.py) the model stays whole and each call runs one
rung, `describe(..., rung=i)`: its blocks are taken out of the layer list for that call only
(`vlm.blocks.temporarily_removed`), so every rung runs from one copy of the weights. No rung given:
the plan's rung.
"""

from __future__ import annotations

import logging
from pathlib import Path
import time

import numpy as np
from ros2_gmskip.bundle_format import plan_id_of, PlanRecord
from ros2_gmskip.errors import ModelLoadError, PlanError
from ros2_gmskip.runtime.preprocess import check_image
from ros2_gmskip.runtime.requests import check_prompt_text, check_request, context_length
from ros2_gmskip.runtime.results import BackendInfo, DEFAULT_PROMPT, Latency, Result
from ros2_gmskip.tokenskip.settings import TokenSkip
from ros2_gmskip.vlm.families import (decode_positions, family_spec, image_features,
                                      position_ids, split_inputs)
from ros2_gmskip.vlm.loading import load_vlm
from ros2_gmskip.vlm.prompting import build_inputs
import torch

log = logging.getLogger(__name__)


def _stop_ids(model, processor) -> frozenset[int]:
    eos = getattr(model.generation_config, 'eos_token_id', None)
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    return frozenset(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


class TorchBackend:
    """`Backend` running the transformers model in eager PyTorch (CPU or a CUDA device)."""

    name = 'torch'

    def __init__(self, model_dir: Path, plan: Path | None = None, device: str = 'cpu',
                 threads: int | None = None, tokens: TokenSkip | None = None,
                 ladder: Path | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        self.model, self.processor = load_vlm(Path(model_dir))
        removed: list[int] = []
        plan_id = plan_sha = None
        plan_tokens = None
        self.ladder = None            # runtime.ladder.Ladder when every rung can run
        if ladder is not None:
            from ros2_gmskip.bundle_format import sha256_file
            from ros2_gmskip.gmskip.ladder import load_ladder
            loaded = load_ladder(Path(ladder), Path(model_dir))
            if loaded.stack != 'decoder':
                raise PlanError(f'ladder {ladder} has {loaded.stack} rungs: only decoder-block '
                                'ladders run')
            if plan is not None:
                from ros2_gmskip.gmskip.plan import load_plan, plan_id as make_plan_id
                if make_plan_id(load_plan(Path(plan), Path(model_dir))) != loaded.plan_id:
                    raise PlanError(f'ladder {ladder} was made for plan id {loaded.plan_id}, '
                                    f'not for {plan}: run ros2-gmskip ladder --plan {plan}')
            self.ladder = loaded.runtime()
            removed = list(loaded.plan_removed)
            plan_id, plan_sha = loaded.plan_id, sha256_file(Path(ladder))
            plan_tokens = loaded.tokens
        elif plan is not None:
            from ros2_gmskip.bundle_format import sha256_file
            from ros2_gmskip.gmskip.plan import (
                check_plan_fits, load_plan, plan_id as make_plan_id)
            from ros2_gmskip.vlm.blocks import remove_blocks
            loaded = load_plan(Path(plan), Path(model_dir))
            check_plan_fits(loaded, plan, self.model)
            removed = sorted(loaded.removed_blocks)
            remove_blocks(self.model, removed, stack=getattr(loaded, 'stack', 'decoder'))
            plan_id, plan_sha = make_plan_id(loaded), sha256_file(Path(plan))
            plan_tokens = loaded.tokens
        # explicit `tokens` (even off) wins; else the plan's (validated by load_plan)
        self.tokens = tokens if tokens is not None else TokenSkip.from_dict(plan_tokens)
        self.family = family_spec(self.model)
        if not self.tokens.is_off:
            from ros2_gmskip.tokenskip.fastv import text_model
            if not self.family.token_skip:
                raise ModelLoadError(f'token skipping (FastV, visual KV removal) supports the '
                                     'LLaVA, Idefics3 and SmolVLM families only, not '
                                     f'{self.family.name}: run without it')
            text_model(self.model)       # ModelLoadError now if the decoder is not supported
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.stop_ids = _stop_ids(self.model, self.processor)
        self.image_token_id = self.model.config.image_token_id      # bench counts image tokens
        self.context = context_length(self.model.config.to_dict())   # max_position_embeddings
        from ros2_gmskip.gmskip.plan import weights_sha256
        from ros2_gmskip.vlm.blocks import decoder_stack
        record = (PlanRecord(removed_blocks=tuple(removed), plan_id=plan_id)
                  if plan or ladder else None)
        self.info = BackendInfo(
            backend=self.name, model_id=weights_sha256(model_dir)[:12],
            plan_id=plan_id_of(record), engine_id='', blocks_removed=tuple(removed),
            num_layers=decoder_stack(self.model).num_blocks - (
                len(removed) if self.ladder is not None else 0), tokens=self.tokens,
            decoder_graph='transformers (eager)', device=str(self.device),
            details={'model': str(model_dir), 'family': self.family.name,
                     'plan_sha256': plan_sha, 'threads': torch.get_num_threads()})

    def check_request(self, prompt: str, max_new_tokens: int) -> None:
        """Raise PromptError unless the prompt (with a probe image) + max_new_tokens fit."""
        check_prompt_text(prompt)
        probe = np.zeros((64, 64, 3), np.uint8)      # fixed-size processors: any image will do
        ids = build_inputs(self.processor, [probe], prompt)['input_ids']
        check_request(prompt, ids.shape[1], max_new_tokens, self.context)

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def describe(self, image: np.ndarray, prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 48, rung: int | None = None) -> Result:
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
        if self.ladder is None:
            if rung is not None:
                raise ValueError(f'rung {rung!r} given, but this backend has no plan ladder')
            return self._describe(image, prompt, max_new_tokens)
        if rung is None:
            rung = self.ladder.plan_rung
        if not 0 <= rung <= self.ladder.top:
            raise ValueError(f'rung {rung!r} is not in the ladder (0..{self.ladder.top})')
        from ros2_gmskip.vlm.blocks import temporarily_removed
        with temporarily_removed(self.model, self.ladder.rungs[rung].removed_blocks):
            return self._describe(image, prompt, max_new_tokens)

    @torch.no_grad()
    def _describe(self, image: np.ndarray, prompt: str, max_new_tokens: int) -> Result:
        if not self.tokens.is_off:
            return self._describe_token_skip(image, prompt, max_new_tokens)
        model = self.model
        t0 = time.perf_counter()
        inputs = build_inputs(self.processor, [check_image(image)], prompt).to(self.device)
        _, text_inputs = split_inputs(inputs)
        T = inputs['input_ids'].shape[1]
        check_request(prompt, T, max_new_tokens, self.context)
        t1 = time.perf_counter()
        features = image_features(model, inputs)              # vision tower + projector
        self._sync()
        t2 = time.perf_counter()
        positions, delta = position_ids(model, inputs)        # (1, T) or M-RoPE (3, 1, T)
        out = model(**text_inputs, position_ids=positions, mm_encoder_outputs={'image': features},
                    use_cache=True)
        token = int(out.logits[0, -1].argmax())
        self._sync()
        t3 = time.perf_counter()
        mask = torch.ones(1, T + max_new_tokens, dtype=torch.int64, device=self.device)
        generated: list[int] = []
        steps = 0
        while token not in self.stop_ids:
            generated.append(token)
            if len(generated) == max_new_tokens:
                break
            n = len(generated)
            index = torch.full((1, 1), T + n - 1, dtype=torch.long, device=self.device)
            out = model(input_ids=torch.tensor([[token]], device=self.device),
                        attention_mask=mask[:, :T + n],
                        position_ids=decode_positions(model, index, delta),
                        past_key_values=out.past_key_values, use_cache=True)
            steps += 1
            token = int(out.logits[0, -1].argmax())
        t4 = time.perf_counter()
        text = self.processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
        t5 = time.perf_counter()
        latency = Latency(preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3,
                          prefill_ms=(t3 - t2) * 1e3, decode_ms=(t4 - t3) * 1e3,
                          total_ms=(t5 - t0) * 1e3, decode_tokens=steps)
        return Result(text=text, tokens=len(generated), latency=latency)

    @torch.no_grad()
    def _describe_token_skip(self, image: np.ndarray, prompt: str, max_new_tokens: int
                             ) -> Result:
        """`describe` through FastV prefill + visual KV removal + greedy decode."""
        from ros2_gmskip.tokenskip.fastv import embed_inputs, greedy_decode, pad_token_id
        from ros2_gmskip.tokenskip.kv_removal import prefill_and_remove
        from ros2_gmskip.tokenskip.reference import kv_config
        model, tokens = self.model, self.tokens
        stop = sorted(self.stop_ids)
        t0 = time.perf_counter()
        inputs = build_inputs(self.processor, [check_image(image)], prompt).to(self.device)
        check_request(prompt, inputs['input_ids'].shape[1], max_new_tokens, self.context)
        t1 = time.perf_counter()
        embeds, mask, positions, image_mask = embed_inputs(model, inputs)
        self._sync()
        t2 = time.perf_counter()
        logits, past, masks = prefill_and_remove(model, embeds, mask, positions, image_mask,
                                                 kv_config(tokens), tokens.fastv)
        first = int(logits[0].argmax())
        self._sync()
        t3 = time.perf_counter()
        if first in self.stop_ids:
            emitted = [first]
        else:       # greedy_decode re-picks the first token from the same logits (free)
            ids, _ = greedy_decode(model, logits, past, masks, positions[:, -1] + 1,
                                   max_new_tokens, stop, pad_token_id(self.processor))
            emitted = ids[0].tolist()
        self._sync()
        t4 = time.perf_counter()
        generated = []
        for token in emitted:
            if token in self.stop_ids:
                break
            generated.append(token)
        text = self.processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
        t5 = time.perf_counter()
        latency = Latency(preprocess_ms=(t1 - t0) * 1e3, vision_ms=(t2 - t1) * 1e3,
                          prefill_ms=(t3 - t2) * 1e3, decode_ms=(t4 - t3) * 1e3,
                          total_ms=(t5 - t0) * 1e3, decode_tokens=len(emitted) - 1)
        return Result(text=text, tokens=len(generated), latency=latency)
