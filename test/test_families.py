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
Every supported VLM family through load, evaluate, calibrate and the torch backend.

Tiny random checkpoints of each family (vlm/tiny_families.py) are built once per session with
their real model and processor classes, in this venv (no torchvision), and go through the same
code a downloaded checkpoint goes through.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ros2_gmskip.errors import ImageError, MetricError, ModelLoadError
from ros2_gmskip.vlm.tiny_families import BUILDERS

FAMILIES = sorted(BUILDERS)
NEW_TOKENS = 4


@pytest.fixture(scope='session')
def family_dirs(tiny_checkpoint) -> dict[str, Path]:
    """Return {family: save_pretrained folder} of every tiny checkpoint, built once."""
    return {family: tiny_checkpoint(family) for family in FAMILIES}


@pytest.fixture(scope='session')
def loaded(family_dirs):
    """Return a loader of (model, processor) per family, each loaded once."""
    from ros2_gmskip.vlm.loading import load_vlm
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_vlm(family_dirs[family])
        return cache[family]
    return get


@pytest.fixture(scope='session')
def samples():
    """Return three val scenes at a camera-like 4:3 size."""
    from ros2_gmskip.scenes import load_samples
    return load_samples('val', 3, width=64, height=48)


def _generate(model, processor, images, batch_size: int = 1) -> list[str]:
    from ros2_gmskip.vlm.generation import generate_texts
    return generate_texts(model, processor, images, max_new_tokens=NEW_TOKENS,
                          batch_size=batch_size)


def test_no_torchvision_here():
    """The point of the image-only processors: this venv cannot install torchvision."""
    from ros2_gmskip.vlm.processors import has_torchvision
    assert not has_torchvision()


@pytest.mark.parametrize('family', FAMILIES)
def test_loads_with_its_real_classes(family, family_dirs, loaded):
    from ros2_gmskip.vlm.families import family_spec, language_model, resolve
    model, processor = loaded(family)
    saved = json.loads((family_dirs[family] / 'processor_config.json').read_text())
    assert type(processor).__name__ == saved['processor_class']
    assert family_spec(model).name == (family if family != 'gmskip_llava' else 'llava')
    assert language_model(model).layers is not None
    assert resolve(model, family_spec(model).vision_tower) is not None


def test_processor_errors_keep_their_reason(family_dirs, tmp_path, monkeypatch):
    """An ImportError whose message starts with a newline used to print as 'ImportError: '."""
    import transformers
    from ros2_gmskip.vlm.processors import load_processor

    def fail(*args, **kwargs):
        raise ImportError('\nPackage `num2words` is required to run SmolVLM processor.\n')
    monkeypatch.setattr(transformers.AutoProcessor, 'from_pretrained', fail)
    with pytest.raises(ModelLoadError) as err:
        load_processor(family_dirs['llava'])
    assert str(err.value).endswith('ImportError: Package `num2words` is required to run '
                                   'SmolVLM processor.')
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('family', FAMILIES)
def test_torch_backend_equals_generate(family, family_dirs, loaded, samples):
    """Greedy text of the backend's own loop (explicit positions) == transformers generate."""
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    backend = TorchBackend(family_dirs[family])
    model, processor = loaded(family)
    images = [s.load_image() for s in samples[:2]]
    want = _generate(model, processor, images)
    got = [backend.describe(image, max_new_tokens=NEW_TOKENS) for image in images]
    assert [r.text for r in got] == want
    assert backend.info.details['family'] == backend.family.name
    assert all(r.latency.vision_ms > 0 and r.latency.prefill_ms > 0 for r in got)


@pytest.mark.parametrize('family', FAMILIES)
def test_batches_equal_single_images(family, loaded, samples):
    """A batch of 2 (one image per sample) gives each sample its own single-image text."""
    model, processor = loaded(family)
    images = [s.load_image() for s in samples]
    assert _generate(model, processor, images, batch_size=2) == _generate(model, processor,
                                                                          images)


@pytest.mark.parametrize('family', FAMILIES)
def test_evaluator_candidates_equal_fresh_models(family, family_dirs, loaded, samples):
    """
    Each candidate scores as a freshly pruned model would, for both stacks.

    Decoder candidates replay the cached vision output (one real vision pass per batch);
    Qwen's get_image_features used to edit the cached record, failing from the 2nd candidate.
    """
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.vlm.blocks import remove_blocks
    from ros2_gmskip.vlm.loading import load_vlm
    model, processor = load_vlm(family_dirs[family])
    decoder = CalibrationEvaluator(None, samples, metric='cider', batch_size=2, model=model,
                                   processor=processor, max_new_tokens=NEW_TOKENS)
    first, second = decoder.predictions(()), decoder.predictions((3,))
    assert decoder.predictions((2, 3)) and decoder.vision.calls == len(decoder.batches)
    images = [s.load_image() for s in samples]
    assert first == _generate(*loaded(family), images, batch_size=2)
    fresh, fresh_processor = load_vlm(family_dirs[family])
    remove_blocks(fresh, [3], 'decoder')
    assert second == _generate(fresh, fresh_processor, images, batch_size=2)

    model, processor = load_vlm(family_dirs[family])
    vision = CalibrationEvaluator(None, samples, metric='cider', batch_size=2, model=model,
                                  processor=processor, max_new_tokens=NEW_TOKENS, stack='vision')
    assert vision.predictions(()) == first
    removed = vision.predictions((1,))
    fresh, fresh_processor = load_vlm(family_dirs[family])
    remove_blocks(fresh, [1], 'vision')
    assert removed == _generate(fresh, fresh_processor, images, batch_size=2)


@pytest.mark.parametrize('family', FAMILIES)
def test_calibrates_both_strategies_and_stacks(family, family_dirs, samples):
    """Reverse and greedy on the decoder and the vision tower; CIDEr may well be 0 here."""
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.gmskip.objective import Objective
    from ros2_gmskip.gmskip.strategies import search
    from ros2_gmskip.vlm.blocks import get_stack
    from ros2_gmskip.vlm.loading import load_vlm
    model, processor = load_vlm(family_dirs[family])
    for stack in ('decoder', 'vision'):
        evaluator = CalibrationEvaluator(None, samples[:2], metric='cider', batch_size=2,
                                         model=model, processor=processor,
                                         max_new_tokens=NEW_TOKENS, stack=stack)
        blocks = get_stack(model, stack).num_blocks
        for strategy in ('reverse', 'greedy'):
            result = search(evaluator.score, evaluator.num_blocks, strategy=strategy,
                            objective=Objective(lam=0.3, max_sparsity=0.5), protect_first=1,
                            progress=False)
            assert result.num_blocks == blocks >= 3
            assert len(result.trajectory) >= 2          # moved at least once
            assert get_stack(model, stack).num_blocks == blocks      # restored after
        assert evaluator.new_tokens


def test_calibrate_and_evaluate_a_vision_plan(family_dirs, tmp_path, capsys):
    """
    Calibrate --stack vision writes a vision plan; evaluate --plan removes VISION blocks.

    It used to remove the decoder blocks with the same indices and report that score.
    """
    import argparse
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate, evaluate, prune
    model_dir = family_dirs['qwen2_vl']

    def run(verb, argv):
        parser = argparse.ArgumentParser()
        verb.add_arguments(parser)
        assert verb.main(parser.parse_args(argv)) == 0
        return capsys.readouterr().out

    out = tmp_path / 'vision.json'
    text = run(calibrate, ['--model', str(model_dir), '--data', 'val', '--n', '2',
                           '--metric', 'cider', '--stack', 'vision', '--strategy', 'reverse',
                           '--protect-first', '1', '--max-sparsity', '0.5', '--batch-size', '2',
                           '--out', str(out), '--no-progress'])
    assert '3 vision blocks' in text
    plan = load_plan(out, model_dir=model_dir)
    assert plan.stack == 'vision' and plan.model.num_blocks == 3
    path = tmp_path / 'plan.json'
    data = json.loads(out.read_text())
    data['removed_blocks'] = [2]
    path.write_text(json.dumps(data))
    result = json.loads(run(evaluate, ['--model', str(model_dir), '--plan', str(path),
                                       '--split', 'val', '--n', '2', '--batch-size', '2',
                                       '--json']).splitlines()[-1])
    assert result['stack'] == 'vision' and result['removed_blocks'] == [2]
    assert result['num_blocks'] == 3         # vision blocks, not the 4 decoder blocks

    # prune saves the image-only processor under its real class; the copy scores the same
    run(prune, ['--model', str(model_dir), '--plan', str(path), '--out', str(tmp_path / 'p')])
    pruned = json.loads(run(evaluate, ['--model', str(tmp_path / 'p'), '--split', 'val',
                                       '--n', '2', '--batch-size', '2',
                                       '--json']).splitlines()[-1])
    assert json.loads((tmp_path / 'p' / 'config.json').read_text())['vision_config'][
        'depth'] == 2
    assert pruned['cider'] == result['cider'] and pruned['num_blocks'] == 4


def test_calibrate_cider_zero_baseline_is_searched():
    """A zero baseline used to stop calibration; now the ratio is 1 + S and the search runs."""
    from ros2_gmskip.gmskip.objective import Objective
    assert Objective.ratio(0.0, 0.0) == 1.0
    with pytest.raises(MetricError, match='negative'):
        Objective.ratio(0.0, -0.5)


@pytest.mark.parametrize('family', ['paligemma', 'qwen2_vl'])
def test_token_skipping_refused_in_one_line(family, family_dirs):
    from ros2_gmskip.tokenskip.settings import TokenSkip
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    with pytest.raises(ModelLoadError, match=f'SmolVLM families only, not {family}'):
        TorchBackend(family_dirs[family], tokens=TokenSkip.from_dict(
            {'fastv': {'k': 1, 'r': 0.5}}))


@pytest.mark.parametrize('family', ['llava', 'qwen2_vl', 'qwen2_5_vl', 'paligemma', 'gemma3'])
def test_torch_free_preprocessing_is_bit_identical(family, loaded):
    """LLaVA-1.5's shortest edge + centre crop, Qwen's smart resize + patches, fixed resizes."""
    from ros2_gmskip.runtime.geometry import from_image_processor, QwenPatches
    from ros2_gmskip.scenes import render_scene
    _, processor = loaded(family)
    ip = processor.image_processor
    mine = from_image_processor(ip)
    for height, width in ((48, 64), (120, 160), (37, 91), (100, 41)):
        image = render_scene(7, width, height)[0]
        want = ip(image, return_tensors='np')
        if isinstance(mine, QwenPatches):
            pixels, grid = mine(image)
            assert np.array_equal(grid, want['image_grid_thw'])
        else:
            pixels = mine(image)
        assert pixels.dtype == want['pixel_values'].dtype
        assert np.array_equal(pixels, want['pixel_values']), (height, width)


@pytest.mark.parametrize('family', ['llava_onevision'])
def test_tiled_preprocessing_refused_in_one_line(family, loaded):
    from ros2_gmskip.runtime.geometry import from_image_processor
    with pytest.raises(ImageError, match='its tiles is not implemented'):
        from_image_processor(loaded(family)[1].image_processor)
