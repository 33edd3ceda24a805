"""S(R): the task metric of a model with decoder blocks R removed, on fixed calibration samples.

Cost control (DESIGN.md): inputs are tokenised once; the vision tower runs once per calibration
batch and its output is reused for every candidate (blocks are removed from the decoder only, so the
vision features cannot change); candidates run batched through the model's own `generate`, so every
family keeps its own merging and position logic (e.g. Qwen2-VL's mrope).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ros2_gmskip.errors import DatasetError, ModelLoadError
from ros2_gmskip.gmskip.metrics import checked, resolve_metric
from ros2_gmskip.runtime.types import DEFAULT_PROMPT
from ros2_gmskip.vlm.generation import decode_new_tokens
from ros2_gmskip.vlm.prompting import build_inputs

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
            return self.store[self.key]
        self.calls += 1
        out = self.inner(*args, **kwargs)
        if self.key is not None:
            self.store[self.key] = out
        return out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['inner'], name)


def _vision_owner(model) -> tuple[torch.nn.Module, str]:
    """The module holding the vision tower and the attribute name it uses."""
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
                 progress: bool = False) -> None:
        from ros2_gmskip.vlm.blocks import decoder_stack, family_of
        from ros2_gmskip.vlm.loading import load_vlm

        if not samples:
            raise DatasetError('the calibration set is empty: pass --n > 0 and a data source '
                               'with images')
        if model is None:
            model, processor = load_vlm(model_dir, trust_remote_code=trust_remote_code)
        self.model, self.processor = model, processor
        self.samples = list(samples)
        self.family = family_of(model)
        self.num_blocks = decoder_stack(model).num_blocks
        self.metric_name = metric
        self.metric = checked(resolve_metric(metric), metric)
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.evaluations = 0
        images = [s.load_image() for s in self.samples]
        self.batches = [build_inputs(processor, images[i:i + batch_size], prompt)
                        for i in range(0, len(images), batch_size)]
        owner, attr = _vision_owner(model)
        self.vision = CachedModule(getattr(owner, attr))
        setattr(owner, attr, self.vision)

    @torch.no_grad()
    def predictions(self, removed: Sequence[int] = ()) -> list[str]:
        """Greedy texts of the model with `removed` decoder blocks taken out (restored after)."""
        from ros2_gmskip.vlm.blocks import temporarily_removed
        texts: list[str] = []
        with temporarily_removed(self.model, tuple(removed)):
            for key, inputs in enumerate(self.batches):
                self.vision.key = key
                try:
                    out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                              do_sample=False)
                finally:
                    self.vision.key = None
                texts += decode_new_tokens(self.processor, out, inputs['input_ids'].shape[1])
        return texts

    def score(self, removed: Sequence[int] = ()) -> float:
        """S(R) for R = `removed`."""
        self.evaluations += 1
        return self.metric(self.predictions(removed), self.samples)

    def all_metrics(self, removed: Sequence[int] = (), names=('accuracy', 'cider', 'exact_match')
                    ) -> tuple[dict[str, float], list[str]]:
        """Every built-in metric that applies to this data, from one generation pass."""
        texts = self.predictions(removed)
        out = {}
        for name in names:
            if name == 'accuracy' and not any(s.main_class for s in self.samples):
                continue
            out[name] = checked(resolve_metric(name), name)(texts, self.samples)
        return out, texts
