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

"""The torch-free runtime: bundle checks, preprocessing, tokenizer, decode loop, backends."""

from __future__ import annotations

import json
from pathlib import Path
import shutil
import time

import numpy as np
import pytest
from ros2_gmskip.bundle_format import FORMAT_VERSION, load_bundle, sha256_file
from ros2_gmskip.errors import BundleError, EngineError, GmSkipError, ImageError
from ros2_gmskip.runtime.preprocess import check_image, Preprocessor
from ros2_gmskip.runtime.results import Backend, DEFAULT_PROMPT
import torch

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def ort_backend(tiny_bundle):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    return OrtBackend(tiny_bundle, threads=1)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """Return a private copy of the tiny bundle, to corrupt."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / 'bundle'))


def _rewrite_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / 'manifest.json').read_text())
    edit(manifest)
    (bundle / 'manifest.json').write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------------
# bundle


def test_missing_bundle_and_manifest(tmp_path):
    with pytest.raises(BundleError, match='does not exist: create it with'):
        load_bundle(tmp_path / 'nope')
    with pytest.raises(BundleError, match='has no manifest.json'):
        load_bundle(tmp_path)


def test_bad_manifest_json_and_format(bundle_copy):
    (bundle_copy / 'manifest.json').write_text('{"format": ')
    with pytest.raises(BundleError, match='manifest.json is not valid JSON'):
        load_bundle(bundle_copy)
    (bundle_copy / 'manifest.json').write_text('{"format": "other@2"}')
    with pytest.raises(BundleError, match="manifest.json format 'other@2' is not"):
        load_bundle(bundle_copy)


def test_a_bundle_of_another_format_version_is_refused_in_one_line(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda m: m.update(format='ros2_gmskip/onnx-bundle@1'))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == (f'bundle {str(bundle_copy)!r} has format 1, this version reads '
                              f'{FORMAT_VERSION}: re-run ros2-gmskip export')


def test_manifest_keys_are_all_required_and_typed(bundle_copy):
    from ros2_gmskip.bundle_format import Manifest, read_manifest

    manifest = read_manifest(bundle_copy)
    assert isinstance(manifest, Manifest) and manifest.segments[0].portable == 'decoder.onnx'
    assert Manifest.from_dict(manifest.to_dict()) == manifest            # JSON round trip
    _rewrite_manifest(bundle_copy, lambda m: m.pop('draft'))
    with pytest.raises(BundleError, match="manifest entry 'Manifest.draft' is missing: re-"):
        load_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, lambda m: m.update(draft=None, extra=1))
    with pytest.raises(BundleError, match=r"Manifest has unknown keys \['extra'\]"):
        load_bundle(bundle_copy)


def test_missing_onnx_file_is_named(bundle_copy):
    (bundle_copy / 'decoder.onnx').unlink()
    with pytest.raises(BundleError, match='decoder.onnx is missing: re-run ros2-gmskip export'):
        load_bundle(bundle_copy)


def test_corrupt_onnx_file_is_named(bundle_copy):
    data = bytearray((bundle_copy / 'vision.onnx').read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / 'vision.onnx').write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r'vision.onnx sha256 mismatch \(manifest [0-9a-f]{12}'
                                          r'\.\., file [0-9a-f]{12}\.\.\): re-run ros2-gmskip'):
        load_bundle(bundle_copy)


def test_manifest_hash_mismatch(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda m: m['files'].update({'decoder.onnx': 'ab' * 32}))
    with pytest.raises(BundleError, match=r'decoder.onnx sha256 mismatch \(manifest abababababab'):
        load_bundle(bundle_copy)


def test_truncated_onnx_with_matching_hash_fails_at_session_load(bundle_copy):
    from ros2_gmskip.runtime.ort_backend import OrtBackend

    path = bundle_copy / 'decoder.onnx'
    path.write_bytes(path.read_bytes()[:1000])
    _rewrite_manifest(bundle_copy, lambda m: m['files'].update({'decoder.onnx':
                                                                sha256_file(path)}))
    with pytest.raises(BundleError, match='onnxruntime cannot load decoder.onnx'):
        OrtBackend(bundle_copy, threads=1)


def test_manifest_may_not_point_outside_the_bundle(bundle_copy):
    _rewrite_manifest(bundle_copy, lambda m: m['files'].update({'../x': '0'}))
    with pytest.raises(BundleError, match="manifest lists '../x'"):
        load_bundle(bundle_copy)


# --------------------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize('resample', [2, 3])        # bilinear (the default model), bicubic
def test_preprocess_equals_hf_processor(resample, scene_images):
    from ros2_gmskip.runtime.preprocess import RESAMPLE_NAMES
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    hf = SiglipImageProcessorPil(size={'height': 48, 'width': 64}, resample=resample,
                                 image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    mine = Preprocessor(size=(48, 64), resample=RESAMPLE_NAMES[resample],
                        image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    rng = np.random.default_rng(0)
    images = [*scene_images[:2], rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
              rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),       # already the right size
              np.full((1, 1, 3), 200, np.uint8), np.asfortranarray(scene_images[2])]
    for image in images:
        want = hf(images=[image], return_tensors='np')['pixel_values']
        got = mine(image)
        assert got.shape == want.shape == (1, 3, 48, 64) and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize('rescale, mean, std', [
    (1 / 255, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), (1 / 255, None, None), (None, None, None)])
def test_preprocess_lookup_gives_the_computed_bits(rescale, mean, std):
    """The per-value table is the rescale + normalise arithmetic, bit for bit, every value."""
    mine = Preprocessor(size=(16, 16), rescale_factor=rescale, image_mean=mean, image_std=std)
    image = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)  # all
    got, want = mine(image), mine.reference(image)
    assert got.dtype == want.dtype == np.float32 and got.shape == (1, 3, 16, 16)
    assert got.tobytes() == want.tobytes()


def test_preprocess_from_manifest_equals_model_processor(tiny_bundle, tiny_model, scene_images):
    _, processor = tiny_model
    mine = Preprocessor.from_manifest(load_bundle(tiny_bundle).manifest.preprocess)
    for image in scene_images:
        want = processor.image_processor(images=[image], return_tensors='np')['pixel_values']
        assert np.abs(mine(image) - want).max() <= 1e-6


@pytest.mark.parametrize('image, match', [
    (np.zeros((8, 8, 3), np.float32), 'got dtype float32'),
    (np.zeros((8, 8, 2), np.uint8), r'shape \(8, 8, 2\): convert it to RGB first$'),
    (np.zeros((8, 8), np.uint8), r'grey: np.dstack'),
    (np.zeros((8, 8, 4), np.uint8), r'RGBA: img\[\.\.\., :3\]'),
    (np.zeros((0, 8, 3), np.uint8), r'empty image of shape \(0, 8, 3\)'),
    (np.zeros((8, 0, 3), np.uint8), 'empty image'),
    ([[1, 2, 3]], 'got list'),
])
def test_bad_images_raise_image_error(image, match, ort_backend):
    with pytest.raises(ImageError, match=match):
        check_image(image)
    with pytest.raises(ImageError, match=match):
        ort_backend.describe(image)


# --------------------------------------------------------------------------------------------------
# tokenizer


def test_prompt_ids_and_decode_match_the_hf_processor(ort_backend, tiny_model, scene_images):
    from ros2_gmskip.vlm.prompting import build_inputs

    _, processor = tiny_model
    for prompt in (DEFAULT_PROMPT, 'describe the cars.', 'unknownword ahead?'):
        want = build_inputs(processor, scene_images[:1], prompt)['input_ids'][0].numpy()
        assert np.array_equal(ort_backend.tokenizer.prompt_ids(prompt), want), prompt
    ids = ort_backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    assert ort_backend.tokenizer.prompt_ids(DEFAULT_PROMPT) is ids            # cached
    sample = [7, 9, 2, 11, 5, 8, 0]
    assert ort_backend.tokenizer.decode(sample) == \
        processor.tokenizer.decode(sample, skip_special_tokens=True).strip()


def test_image_token_in_prompt_is_refused(ort_backend):
    with pytest.raises(BundleError, match='gives 17 image tokens, the vision graph makes 16'):
        ort_backend.tokenizer.prompt_ids('<image> what is this?')


# --------------------------------------------------------------------------------------------------
# decode loop and backend


def test_describe_result_and_latency(ort_backend, scene_images):
    assert isinstance(ort_backend, Backend)
    result = ort_backend.describe(scene_images[0], max_new_tokens=10)
    lat = result.latency
    assert result.tokens >= 2, 'the tiny model should not stop at once (seeded)'
    for name in ('preprocess_ms', 'vision_ms', 'prefill_ms', 'decode_ms', 'total_ms'):
        assert getattr(lat, name) > 0, name
    assert lat.total_ms >= lat.preprocess_ms + lat.vision_ms + lat.prefill_ms + lat.decode_ms
    assert lat.decode_tokens in (result.tokens - 1, result.tokens)
    assert result.to_dict()['latency']['decode_per_token_ms'] > 0
    # the loop itself: ids, stop token excluded, tokens == len(ids)
    backend = ort_backend
    ids = backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    image_embeds = backend.image_embeds(backend.preprocess(scene_images[0]))[0]
    embeds = backend.prompt_embeds(ids, image_embeds)
    out = backend.decoder_loop.generate(embeds, 10)
    assert result.tokens == len(out.ids) and out.ids.dtype == np.int64
    assert not set(out.ids.tolist()) & backend.decoder_loop.stop_ids
    assert backend.tokenizer.decode(out.ids) == result.text
    assert out.decode_steps == len(out.ids) - (0 if out.stopped else 1)


def test_max_new_tokens_and_buffer_growth(ort_backend, scene_images):
    from ros2_gmskip.runtime.decode import DecodeLoop

    one = ort_backend.describe(scene_images[1], max_new_tokens=1)
    assert one.tokens <= 1 and one.latency.decode_tokens == 0 and one.latency.decode_ms >= 0
    small = DecodeLoop(ort_backend.portable, ort_backend.embed_table,
                       ort_backend.tokenizer.stop_ids)
    small._alloc(4)                                 # far below prompt + new tokens: grows
    ids = ort_backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    embeds = ort_backend.prompt_embeds(
        ids, ort_backend.image_embeds(ort_backend.preprocess(scene_images[1]))[0])
    grown = small.generate(embeds, 12)
    assert np.array_equal(grown.ids, ort_backend.decoder_loop.generate(embeds, 12).ids)
    with pytest.raises(ValueError, match='max_new_tokens must be >= 1'):
        small.generate(embeds, 0)


def test_greedy_text_identical_ort_torch_and_generate(ort_backend, tiny_model_dir, tiny_model,
                                                      scene_images):
    from ros2_gmskip.vlm.generation import generate_texts
    from ros2_gmskip.vlm.torch_backend import TorchBackend

    model, processor = tiny_model
    torch_backend = TorchBackend(tiny_model_dir, threads=1)
    reference = generate_texts(model, processor, scene_images, max_new_tokens=12)
    for image, want in zip(scene_images, reference):
        ort_result = ort_backend.describe(image, max_new_tokens=12)
        torch_result = torch_backend.describe(image, max_new_tokens=12)
        assert ort_result.text == torch_result.text == want
        assert ort_result.tokens == torch_result.tokens
        assert torch_result.latency.decode_tokens == ort_result.latency.decode_tokens
    assert len(set(reference)) >= 1 and all(reference)


def test_backend_info(ort_backend, tiny_bundle, tiny_pruned_bundle, tiny_model_dir):
    from ros2_gmskip.gmskip.plan import load_plan, plan_id, weights_sha256
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.runtime.results import BackendInfo

    info = ort_backend.info
    assert isinstance(info, BackendInfo)
    assert info.backend == 'onnxruntime' and info.details['providers'] == ['CPUExecutionProvider']
    assert info.model_id == weights_sha256(tiny_model_dir)[:12]
    assert info.plan_id == 'full' and info.blocks_removed == () and info.num_layers == 4
    assert info.engine_id == sha256_file(tiny_bundle / 'manifest.json')[:12]
    pruned = OrtBackend(tiny_pruned_bundle, threads=1).info
    plan = load_bundle(tiny_pruned_bundle).manifest.plan
    assert pruned.blocks_removed == (1, 3) and pruned.num_layers == 2
    assert pruned.plan_id == plan_id(load_plan(plan.path, check_hash=False))
    assert pruned.model_id == info.model_id and pruned.engine_id != info.engine_id
    assert info.to_dict()['blocks_removed'] == [] and json.dumps(pruned.to_dict())


def test_scene_json_carries_the_same_ids_on_every_backend(tiny_pruned_bundle, tiny_model_dir):
    """A real exported bundle and the torch model it came from, through the node's pipeline."""
    from fakes import image_msg
    from ros2_gmskip.gmskip.plan import weights_sha256
    from ros2_gmskip.ros.params import DescriberParams
    from ros2_gmskip.ros.pipeline import DescriberCore
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.vlm.torch_backend import TorchBackend

    manifest = load_bundle(tiny_pruned_bundle).manifest
    backends = [OrtBackend(tiny_pruned_bundle, threads=1),
                TorchBackend(tiny_model_dir, plan=Path(manifest.plan.path), threads=1)]
    scenes = []
    for backend in backends:
        outputs = []
        core = DescriberCore(backend, DescriberParams(max_new_tokens=4), publish=outputs.append)
        core.process(image_msg(sec=3), False)
        scenes.append(json.loads(json.dumps(outputs[0].scene_dict())))
    onnx, eager = scenes
    assert onnx['model_id'] == eager['model_id'] == weights_sha256(tiny_model_dir)[:12]
    assert onnx['plan_id'] == eager['plan_id'] == manifest.plan.plan_id
    assert len(onnx['plan_id']) == 12
    assert onnx['engine_id'] == sha256_file(tiny_pruned_bundle / 'manifest.json')[:12]
    assert eager['engine_id'] == ''
    assert onnx['text'] == eager['text']


def test_unavailable_provider_lists_the_available_ones():
    from ros2_gmskip.runtime.ort_backend import resolve_providers

    assert resolve_providers(None) == ['CPUExecutionProvider']
    assert resolve_providers('cpu') == ['CPUExecutionProvider']
    with pytest.raises(EngineError, match=r"provider 'nope' \(nope\) is not available in this "
                                          r'onnxruntime build: available are .*CPUExecution'):
        resolve_providers(['nope'])
    import onnxruntime as ort
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(EngineError,
                           match=r"'cuda' \(CUDAExecutionProvider\).*onnxruntime-gpu"):
            resolve_providers(['cuda'])


# --------------------------------------------------------------------------------------------------
# factory


def test_factory_fake_backend(scene_images):
    from ros2_gmskip.runtime.factory import create_backend

    backend = create_backend('fake:20')
    assert isinstance(backend, Backend) and backend.name == 'fake'
    t0 = time.perf_counter()
    result = backend.describe(scene_images[0])
    assert time.perf_counter() - t0 >= 0.019
    assert result.text and result.tokens > 0 and result.latency.total_ms >= 19
    with pytest.raises(ImageError):
        backend.describe(np.zeros((4, 4), np.uint8))
    with pytest.raises(GmSkipError, match="bad fake backend 'fake:x'"):
        create_backend('fake:x')


def test_factory_kinds(tiny_bundle, tiny_model_dir, monkeypatch):
    import sys

    from ros2_gmskip.runtime import defaults
    from ros2_gmskip.runtime.factory import create_backend

    assert create_backend('onnxruntime', bundle=tiny_bundle, threads=1).name == 'onnxruntime'
    assert create_backend('torch', model=tiny_model_dir, threads=1).name == 'torch'
    calls = []                  # no bundle: the cached export of (model, plan) from defaults

    def ensure_bundle(model, plan, full=False, tokens=None, fused_weights='fp32'):
        calls.append((model, plan, full, fused_weights))
        return tiny_bundle
    monkeypatch.setattr(defaults, 'ensure_bundle', ensure_bundle)
    assert create_backend('onnxruntime', full=True,
                          threads=1).info.details['bundle'] == str(tiny_bundle)
    assert create_backend('onnxruntime', model=tiny_model_dir, plan=None, threads=1).name
    assert create_backend('onnxruntime', fused_weights='int8', threads=1).name
    assert calls == [(None, None, True, 'fp32'), (tiny_model_dir, None, False, 'fp32'),
                     (None, None, False, 'int8')]
    with pytest.raises(GmSkipError, match='fused_weights int4 quantizes the cached ONNX export'):
        create_backend('torch', fused_weights='int4')
    with pytest.raises(GmSkipError, match="unknown backend 'onnx': expected one of onnxruntime"):
        create_backend('onnx')
    monkeypatch.setitem(sys.modules, 'ros2_gmskip.runtime.trt_backend', None)
    with pytest.raises(EngineError, match='the tensorrt backend is not available'):
        create_backend('tensorrt', bundle=tiny_bundle)
