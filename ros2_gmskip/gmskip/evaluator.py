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
S(R): the task metric of a model with decoder blocks R removed, on fixed calibration samples.

Cost control (DESIGN.md): inputs are tokenised once; the vision tower runs once per calibration
batch and its output is reused for every candidate (blocks are removed from the decoder only, so
the vision features cannot change); candidates run batched through the model's own `generate`, so
every family keeps its own merging and position logic (e.g. Qwen2-VL's mrope).

Token skipping (FastV, visual KV removal) cannot go through `generate`: it changes the token set
inside the decoder. A non-off `TokenSkip` therefore decodes with tokenskip's functional path
(`kv_removal_generate_ids`), which reaches the vision tower through `model.get_image_features`,
so the cached features serve it too. The evaluator also records how many tokens each removal set
generated (`mean_new_tokens`) and the prompt's shape (`workload`), which the token search needs
for its FLOPs estimate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ros2_gmskip.errors import DatasetError, ModelLoadError
from ros2_gmskip.gmskip.metrics import checked, resolve_metric
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.tokenskip.settings import TokenSkip
from ros2_gmskip.vlm.generation import decode_new_tokens
from ros2_gmskip.vlm.prompting import build_inputs
import torch

LOG = logging.getLogger(__name__)
VISION_ATTRS = ('vision_tower', 'vision_model', 'visual')


class CachedModule(torch.nn.Module):
    """Wraps a module; while `key` is set, the first output per key is stored and replayed."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.key: object | None = None
        self.store: dict[object, object] = {}
        self.calls = 0          # real forward passes of the inner module (tests check reuse)

    def forward(self, *args, **kwargs):
        if self.key is not None and self.key in self.store:
            return _fresh(self.store[self.key])
        self.calls += 1
        out = self.inner(*args, **kwargs)
        if self.key is not None:
            self.store[self.key] = _fresh(out)
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['inner'], name)


def _fresh(out):
    """
    Return a new output record holding the same tensors.

    Callers edit the record they get: Qwen's `get_image_features` replaces its `pooler_output`
    by per-image splits, so a stored record handed out twice broke every candidate after the
    first. Tensors are shared, never copied (nothing writes into them).
    """
    if isinstance(out, dict):
        return type(out)(**out)
    if isinstance(out, (list, tuple)) and not hasattr(out, '_fields'):
        return type(out)(out)
    return out


def _vision_owner(model) -> tuple[torch.nn.Module, str]:
    """Return the module holding the vision tower and the attribute name it uses."""
    for owner in (getattr(model, 'model', None), model):
        for attr in VISION_ATTRS:
            if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.Module):
                return owner, attr
    raise ModelLoadError(f'cannot find the vision tower of {type(model).__name__} '
                         f'(looked for {VISION_ATTRS})')


class CalibrationEvaluator:
    """Scores removal sets R on calibration samples; `evaluations` counts model evaluations."""

    def __init__(self, model_dir: Path | None, samples: Sequence, metric: str = 'accuracy',
                 batch_size: int = 16, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 48,
                 trust_remote_code: bool = False, model=None, processor=None,
                 progress: bool = False, stack: str = 'decoder',
                 batches: list | None = None, object_parser: str = '') -> None:
        from ros2_gmskip.vlm.blocks import family_of, get_stack
        from ros2_gmskip.vlm.loading import load_vlm

        if not samples:
            raise DatasetError('the calibration set is empty: pass --n > 0 and a data source '
                               'with images')
        if model is None:
            model, processor = load_vlm(model_dir, trust_remote_code=trust_remote_code)
        self.model, self.processor = model, processor
        self.samples = list(samples)
        self.family = family_of(model)
        self.stack = stack
        self.num_blocks = get_stack(model, stack).num_blocks
        self.metric_name = metric
        self.object_parser = object_parser      # object_f1's parser ('' = caption grammar)
        self.metric = checked(resolve_metric(metric, object_parser), metric)
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.evaluations = 0
        self.new_tokens: dict[tuple, float] = {}    # (removed, tokens) -> mean tokens generated
        if batches is None:      # a Ray worker gets the driver's batches instead (distributed.py)
            images = [s.load_image() for s in self.samples]
            batches = [build_inputs(processor, images[i:i + batch_size], prompt)
                       for i in range(0, len(images), batch_size)]
        self.batches = batches
        self.vision: CachedModule | None = None
        if stack == 'decoder':      # vision-stack candidates change the vision output
            owner, attr = _vision_owner(model)
            self.vision = CachedModule(getattr(owner, attr))
            setattr(owner, attr, self.vision)

    @torch.no_grad()
    def predictions(self, removed: Sequence[int] = (), tokens: TokenSkip | None = None
                    ) -> list[str]:
        """
        Return the greedy texts of the model with `removed` blocks of its stack taken out.

        The blocks are restored after; the token skipping `tokens` is applied (None or off: the
        model's own `generate`). The vision output is replayed only when the search removes
        decoder blocks.
        """
        key = tuple(sorted(removed))
        texts, lengths = self.generate(key, tokens, range(len(self.batches)))
        self.record_lengths(key, tokens, lengths)
        return texts

    @torch.no_grad()
    def generate(self, removed: Sequence[int], tokens: TokenSkip | None,
                 batch_ids: Sequence[int]) -> tuple[list[str], list[int]]:
        """
        Return the texts and generated lengths of the batches `batch_ids`, in that order.

        A shard of `predictions`: a Ray worker runs some batches, the driver joins the shards.
        """
        from ros2_gmskip.vlm.blocks import temporarily_removed
        texts: list[str] = []
        lengths: list[int] = []
        with temporarily_removed(self.model, tuple(sorted(removed)), self.stack):
            for batch in batch_ids:
                if self.vision is not None:
                    self.vision.key = batch
                try:
                    new = self._generate(self.batches[batch], tokens)
                finally:
                    if self.vision is not None:
                        self.vision.key = None
                texts += decode_new_tokens(self.processor, new, 0)
                lengths += generated_lengths(new, self._stop_ids())
        return texts, lengths

    def record_lengths(self, removed: Sequence[int], tokens: TokenSkip | None,
                       lengths: Sequence[int]) -> None:
        """Record the generated lengths of every sample with `removed` and `tokens`."""
        key = (tuple(sorted(removed)), _token_key(tokens))
        self.new_tokens[key] = sum(lengths) / len(lengths)

    def _generate(self, inputs, tokens: TokenSkip | None) -> torch.Tensor:
        """Return the new token ids (B, N) of one batch; after the stop token rows hold padding."""
        if tokens is None or tokens.is_off:
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False)
            return out[:, inputs['input_ids'].shape[1]:]
        from ros2_gmskip.tokenskip.reference import token_skip_ids
        return token_skip_ids(self.model, self.processor, inputs, tokens, self.max_new_tokens)

    def _stop_ids(self) -> list[int]:
        """Return the eos ids ([] when the model defines none: lengths then count every token)."""
        from ros2_gmskip.tokenskip.fastv import stop_ids
        try:
            return stop_ids(self.model, self.processor)
        except (TypeError, ValueError):        # eos_token_id None everywhere
            return []

    def check_tokens(self) -> None:
        """Raise ModelLoadError now, not after a long search, if token skipping cannot run here."""
        from ros2_gmskip.tokenskip.fastv import text_model
        from ros2_gmskip.vlm.families import family_spec
        family = family_spec(self.model)
        if not family.token_skip:
            raise ModelLoadError(f'token skipping (FastV, visual KV removal) supports the LLaVA '
                                 f'family only, not {family.name}: leave out the token options')
        text_model(self.model)

    def mean_new_tokens(self, removed: Sequence[int] = (), tokens: TokenSkip | None = None
                        ) -> float:
        """
        Return the mean tokens generated per sample (stop token included) with `removed`, `tokens`.

        Reuses the last evaluation of that pair, else runs one.
        """
        key = (tuple(sorted(removed)), _token_key(tokens))
        if key not in self.new_tokens:
            self.predictions(removed, tokens)
        return self.new_tokens[key]

    def workload(self, removed: Sequence[int] = ()):
        """
        Return the FLOPs workload of one calibration description for the token search.

        The full decoder's sizes, the prompt's length and image tokens, and the mean number of
        tokens the model with `removed` generates (plain decoding).
        """
        from ros2_gmskip.gmskip.token_search import Workload
        from ros2_gmskip.tokenskip.flops import DecoderDims
        dims = DecoderDims.from_config(self.model.config.get_text_config(decoder=True))
        prompt, image = [], []
        image_id = self.model.config.image_token_id
        for inputs in self.batches:
            mask = inputs.get('attention_mask')
            ids = inputs['input_ids']
            prompt += (mask.sum(dim=1) if mask is not None else
                       torch.full((ids.shape[0],), ids.shape[1])).tolist()
            image += (ids == image_id).sum(dim=1).tolist()
        new = self.mean_new_tokens(removed)
        return Workload(dims=dims, n_tokens=round(sum(prompt) / len(prompt)),
                        n_image=round(sum(image) / len(image)), new_tokens=max(1, round(new)))

    def score(self, removed: Sequence[int] = (), tokens: TokenSkip | None = None) -> float:
        """S(R) for R = `removed` (with token skipping `tokens`, if any)."""
        self.evaluations += 1
        return self.metric(self.predictions(removed, tokens), self.samples)

    def all_metrics(self, removed: Sequence[int] = (),
                    names=('accuracy', 'cider', 'exact_match', 'object_f1'),
                    tokens: TokenSkip | None = None) -> tuple[dict[str, float], list[str]]:
        """Every built-in metric that applies to this data, from one generation pass."""
        texts = self.predictions(removed, tokens)
        out = {}
        for name in names:
            if name == 'accuracy' and not any(s.main_class for s in self.samples):
                continue
            if name == 'object_f1' and not any(s.objects for s in self.samples):
                continue
            metric = resolve_metric(name, self.object_parser)
            out[name] = checked(metric, name)(texts, self.samples)
        return out, texts


def generated_lengths(new: torch.Tensor, stop: Sequence[int]) -> list[int]:
    """Tokens generated per row of new ids (B, N): up to and including the first stop token."""
    if not stop:
        return [new.shape[1]] * new.shape[0]
    is_stop = torch.isin(new, torch.tensor(list(stop), device=new.device))     # (B, N)
    first = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1) + 1,
                        torch.full((new.shape[0],), new.shape[1], device=new.device))
    return first.tolist()


def _token_key(tokens: TokenSkip | None) -> TokenSkip | None:
    """Off settings share one key with None (they decode the same way)."""
    return None if tokens is None or tokens.is_off else tokens
