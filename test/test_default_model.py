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

"""The shipped default model loads offline and meets its quality bar; broken folders fail."""

import json
import os

import pytest
from ros2_gmskip.errors import ImageError, ModelLoadError
from ros2_gmskip.vlm.loading import check_model_dir, default_model_dir, load_vlm

MODEL = default_model_dir()


def test_missing_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match='does not exist'):
        check_model_dir(tmp_path / 'nope')


def test_folder_without_weights_and_pickles_refused(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(ModelLoadError, match='no \\*.safetensors'):
        check_model_dir(tmp_path)
    (tmp_path / 'pytorch_model.bin').write_bytes(b'pickle')
    with pytest.raises(ModelLoadError, match='pickles are never loaded'):
        check_model_dir(tmp_path)


def test_bad_config_json(tmp_path):
    (tmp_path / 'config.json').write_text('{not json')
    with pytest.raises(ModelLoadError, match='config.json .* not valid JSON'):
        check_model_dir(tmp_path)


def test_corrupt_safetensors(tmp_path):
    for name in os.listdir(MODEL):
        if (MODEL / name).is_file():
            os.symlink(MODEL / name, tmp_path / name)
    (tmp_path / 'model.safetensors').unlink()
    data = (MODEL / 'model.safetensors').read_bytes()
    (tmp_path / 'model.safetensors').write_bytes(data[:len(data) // 3])       # truncated
    with pytest.raises(ModelLoadError, match='corrupt safetensors file .*model.safetensors'):
        load_vlm(tmp_path)
    (tmp_path / 'model.safetensors').write_bytes(b'\xff' * 64)                # garbage header
    with pytest.raises(ModelLoadError, match='corrupt safetensors'):
        check_model_dir(tmp_path)


def test_unreadable_image(tmp_path):
    from ros2_gmskip.images import read_image_file
    bad = tmp_path / 'frame.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)
    with pytest.raises(ImageError, match="image '.*frame.png' starts like a png file but its "):
        read_image_file(bad)
    with pytest.raises(ImageError, match='missing.png.* does not exist'):
        read_image_file(tmp_path / 'missing.png')


def test_shipped_model_files_and_card():
    names = {p.name for p in MODEL.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'processor_config.json',
            'README.md'} <= names
    assert sum(p.stat().st_size for p in MODEL.rglob('*') if p.is_file()) < 40 * 2**20
    config = json.loads((MODEL / 'config.json').read_text())
    assert config['model_type'] == 'llava'
    assert config['text_config']['num_hidden_layers'] >= 12


def test_default_train_config_is_the_shipped_models_recipe():
    """
    Check `ros2-gmskip train` with no options trains the shipped model's recipe.

    That is what models/gmskip-llava-scenes was trained with (its training_log.json), so changing
    a default means retraining the shipped model.
    """
    from dataclasses import asdict

    from ros2_gmskip.vlm.configs import TrainConfig
    summary = json.loads((MODEL / 'training_log.json').read_text())['summary']
    cfg = asdict(TrainConfig())
    assert summary['model_config'] == cfg.pop('model')
    assert summary['train_config'] == cfg


@pytest.mark.slow
def test_shipped_model_loads_offline_and_meets_quality_bar(monkeypatch):
    """On a fixed 64-scene slice of the test split (the full bar, on 500, is in the model card)."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TRANSFORMERS_OFFLINE', '1')
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(MODEL)
    processor = AutoProcessor.from_pretrained(MODEL)
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
    evaluator = CalibrationEvaluator(None, load_samples('test', 64), model=model,
                                     processor=processor, batch_size=32)
    metrics, texts = evaluator.all_metrics()
    assert metrics['accuracy'] >= 0.9, (metrics, texts[:3])
    assert metrics['cider'] >= 1.2, (metrics, texts[:3])


def test_vision_features_are_computed_once_per_batch():
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
    evaluator = CalibrationEvaluator(MODEL, load_samples('val', 4), batch_size=2,
                                     max_new_tokens=4)
    first = evaluator.predictions(())
    calls = evaluator.vision.calls
    assert calls == 2                       # two batches
    evaluator.predictions((15,))
    evaluator.predictions((14, 15))
    assert evaluator.vision.calls == calls  # cached: no new vision passes
    assert evaluator.predictions(()) == first


def test_evaluator_refuses_empty_calibration_set():
    from ros2_gmskip.errors import DatasetError
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    with pytest.raises(DatasetError, match='empty'):
        CalibrationEvaluator(MODEL, [])
