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
Shared fixtures: a tiny random LLaVA (save_pretrained folder) and ONNX bundles exported from it.

Built once per session (a few seconds on one core): the model is the project's default
architecture (SigLIP tower + GELU projector + Llama decoder, word-level tokenizer, PIL SigLIP
processor) shrunk to 4 decoder blocks, hidden 64, 64x64 images (16 image tokens), with grouped-
query attention (4 heads, 2 KV heads) so the export's repeat_kv path is covered too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_LAYERS = 4
TINY_IMAGE = 64            # patch 16 -> 16 image tokens
TINY_KV_HEADS = 2


def _threads() -> None:
    import torch
    torch.set_num_threads(1)     # the CPU is shared (a training job may run alongside)


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    """
    Return a function family -> folder of its tiny random checkpoint (vlm/tiny_families.py).

    Each family is built (save_pretrained, real processor classes) at most once per session, so
    the family tests, the families export tests and the Qwen export tests share the folders.
    """
    _threads()
    from ros2_gmskip.vlm.tiny_families import save_tiny
    root = tmp_path_factory.mktemp('tiny_families')
    built: dict[str, Path] = {}

    def checkpoint(family: str) -> Path:
        if family not in built:
            built[family] = save_tiny(family, root / family)
        return built[family]
    return checkpoint


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory) -> Path:
    """Save a tiny random default-architecture model (GQA decoder) with save_pretrained."""
    _threads()
    from ros2_gmskip.runtime.results import DEFAULT_PROMPT
    from ros2_gmskip.scenes import CLASSES, LIGHTINGS, POSITIONS, WEATHERS
    from ros2_gmskip.vlm.default_model import (
        build_model,
        build_processor,
        build_tokenizer,
        DefaultModelConfig,
    )
    import torch
    from transformers import LlavaForConditionalGeneration

    corpus = [DEFAULT_PROMPT, 'a red car ahead, near. a bus on the left, far.',
              ' '.join(CLASSES), ' '.join(LIGHTINGS), ' '.join(WEATHERS), ' '.join(POSITIONS)]
    cfg = DefaultModelConfig(image_size=TINY_IMAGE, patch_size=16, vision_hidden=32,
                             vision_layers=1, vision_heads=2, text_hidden=64,
                             text_intermediate=128, text_layers=TINY_LAYERS, text_heads=4,
                             max_positions=128)
    tokenizer = build_tokenizer(corpus)
    processor = build_processor(tokenizer, cfg)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    config = model.config
    config.text_config.num_key_value_heads = TINY_KV_HEADS
    generation_config = model.generation_config
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = generation_config
    with torch.no_grad():     # tied embeddings: zero special rows so random logits pick words
        special = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
        model.get_input_embeddings().weight[special] = 0.0
    out = tmp_path_factory.mktemp('tiny_model')
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # an n-gram draft table, as `ros2-gmskip draft` writes: every tiny bundle decodes
    # speculatively (the random model refuses most guesses, which is tested too)
    from ros2_gmskip.runtime.draft import DRAFT_FILE, NgramDraft
    NgramDraft.build([tokenizer.encode(c, add_special_tokens=False) + [tokenizer.eos_token_id]
                      for c in corpus]).save(out / DRAFT_FILE)
    return out


@pytest.fixture(scope='session')
def tiny_model(tiny_model_dir):
    """(model, processor) of `tiny_model_dir`, loaded once (do not modify it in place)."""
    from ros2_gmskip.vlm.loading import load_vlm
    _threads()
    return load_vlm(tiny_model_dir)


def write_plan(model_dir: Path, removed: list[int], path: Path, num_blocks: int = TINY_LAYERS,
               sha256: str | None = None) -> Path:
    """Write a minimal valid skip plan (ros2_gmskip/skip-plan@1) removing decoder `removed`."""
    from ros2_gmskip.gmskip.plan import weights_sha256
    plan = {
        'format': 'ros2_gmskip/skip-plan@1',
        'model': {'path': str(model_dir), 'sha256': sha256 or weights_sha256(model_dir),
                  'family': 'llava', 'num_blocks': num_blocks},
        'stack': 'decoder', 'removed_blocks': list(removed),
        'metric': {'name': 'accuracy', 'baseline': 1.0, 'final': 1.0},
        'objective': {'lambda': 0.3}, 'strategy': 'reverse', 'protect_first': 0.25,
        'trajectory': [], 'evaluations': 0, 'created_by': 'test',
    }
    path.write_text(json.dumps(plan))
    return path


@pytest.fixture(scope='session')
def make_plan():
    """Return `write_plan`: (model_dir, removed, path, sha256=None) -> Path writes a skip plan."""
    return write_plan


@pytest.fixture(scope='session')
def tiny_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """Export the tiny model (full) and validate it on 3 test scenes."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    _threads()
    out = tmp_path_factory.mktemp('bundles') / 'full'
    export_bundle(tiny_model_dir, out, validate_n=3, max_new_tokens=12, threads=1)
    return out


@pytest.fixture(scope='session')
def tiny_pruned_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """Export the tiny model with a plan that removes decoder blocks 1 and 3."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    _threads()
    folder = tmp_path_factory.mktemp('pruned')
    plan = write_plan(tiny_model_dir, [1, 3], folder / 'plan.json')
    out = folder / 'bundle'
    export_bundle(tiny_model_dir, out, plan=plan, validate_n=3, max_new_tokens=12, threads=1)
    return out


@pytest.fixture(scope='session')
def tiny_ladder(tiny_model_dir, tmp_path_factory):
    """Return (plan file, PlanLadder) of the tiny model: rungs remove [1, 2, 3] .. [3], []."""
    from ros2_gmskip.gmskip.ladder import build_ladder, ladder_path, save_ladder
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.plan import plan_id, save_plan, SkipPlan
    from ros2_gmskip.gmskip.strategies import search
    from ros2_gmskip.gmskip.token_search import Workload
    from ros2_gmskip.tokenskip.flops import DecoderDims

    def score(removed):
        return 1.0 - 0.01 * len(removed)

    result = search(score, 4, objective=Objective(lam=0.3), protect_first=1, progress=False)
    folder = tmp_path_factory.mktemp('tiny_ladder')
    plan = SkipPlan.from_search(result, tiny_model_dir, family='llava', metric='accuracy',
                                protect_first=1)
    plan_path = save_plan(plan, folder / 'plan.json')
    workload = Workload(DecoderDims(layers=4, hidden=64, ffn=128), 20, 16, 8)
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), score, workload, floor=None)
    save_ladder(ladder, ladder_path(plan_path))
    return plan_path, ladder


@pytest.fixture(scope='session')
def scene_images():
    """Five small RGB uint8 test-split scenes (160x120)."""
    from ros2_gmskip.scenes import load_samples
    return [s.load_image() for s in load_samples('test', 5, width=160, height=120)]
