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
Qwen2-VL and Qwen2.5-VL exported to ONNX and run by ONNX Runtime.

Tiny random checkpoints of both (vlm/tiny_families.py) are exported once per session for a
480x640 camera (patch grid 1x6x8, 12 image tokens; Qwen2.5-VL with 4 attention windows) and
validated as LLaVA is (exporters/validate.py); the tests then check the pieces the validation
relies on, each against transformers, and the one-line refusals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ros2_gmskip.errors import BundleError, EngineError, ImageError

FAMILIES = ('qwen2_vl', 'qwen2_5_vl')
CAMERA = (480, 640)
NEW_TOKENS = 8
PROMPTS = ('describe the scene.', 'what is on the left ?')


@pytest.fixture(scope='session')
def qwen(tiny_checkpoint, tmp_path_factory) -> dict[str, dict]:
    """Return {family: {'dir', 'bundle', 'result'}}: each checkpoint built and exported once."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    root = tmp_path_factory.mktemp('qwen')
    out = {}
    for family in FAMILIES:
        model_dir = tiny_checkpoint(family)
        result = export_bundle(model_dir, root / f'{family}-bundle', validate_n=3,
                               max_new_tokens=NEW_TOKENS, threads=1, camera_size=CAMERA)
        out[family] = {'dir': model_dir, 'bundle': result.path, 'result': result}
    return out


@pytest.fixture(scope='session')
def loaded(qwen):
    """Return a loader of (model, processor) per family, each loaded once."""
    from ros2_gmskip.vlm.loading import load_vlm
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_vlm(qwen[family]['dir'])
        return cache[family]
    return get


@pytest.fixture(scope='session')
def frames() -> list[np.ndarray]:
    """Return three test scenes at the camera's size."""
    from ros2_gmskip.exporters.qwen_vision import camera_frames
    from ros2_gmskip.exporters.validate import scene_images
    return camera_frames(scene_images(3), CAMERA)


def _backend(qwen, family: str, **kwargs):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    return OrtBackend(qwen[family]['bundle'], threads=1, **kwargs)


@pytest.mark.parametrize('family', FAMILIES)
def test_export_validates_and_records_the_layout(family, qwen):
    """Every check passed (op lint included); the manifest holds what export fixed."""
    result = qwen[family]['result']
    assert all(c.ok for c in result.checks), [c.line() for c in result.checks if not c.ok]
    names = {c.name for c in result.checks}
    assert {'vision.onnx TensorRT ops', 'decoder.onnx TensorRT ops', 'positions',
            'preprocess', 'image_embeds', 'logits', 'greedy text'} <= names
    m = result.manifest
    assert m.mrope.camera_size == CAMERA and m.mrope.grid_thw == (1, 6, 8)
    assert m.preprocess.size == (24, 32)                    # smart resize of 480x640
    assert m.tokens.num_image_tokens == 12                  # 6 * 8 / 2^2
    assert m.mrope.rope_delta == 4 - 12                     # max(3, 4) - 12
    assert m.mrope.windows == (4 if family == 'qwen2_5_vl' else None)
    assert m.fused.positions == 'explicit' and m.decoder.family == family
    assert m.validation['identical_text'] == m.validation['fused_identical_text'] == '3/3'
    assert m.graphs['vision'].inputs[0].shape == (48, 96)
    assert m.graphs['decoder'].inputs[2].shape == (3, 'batch', 'seq')
    fused = _backend(qwen, family).decoder_loop.runners[0].prefill_session
    assert [i.shape for i in fused.get_inputs() if i.name == 'position_ids'] == [[3, 1, 'seq']]


@pytest.mark.parametrize('family', FAMILIES)
def test_patches_are_bit_identical_to_the_hf_processor(family, qwen, loaded, frames):
    """Smart resize + patches, torch-free, equal the processor's bits; other grids refused."""
    from ros2_gmskip.vlm.prompting import build_inputs
    _, processor = loaded(family)
    backend = _backend(qwen, family)
    near = np.ascontiguousarray(frames[0][:470, :630])      # another size, the same grid
    for image in [*frames, near]:
        want = build_inputs(processor, [image], PROMPTS[0])
        assert want['image_grid_thw'].tolist() == [[1, 6, 8]]
        got = backend.preprocess(image)
        assert got.dtype == np.float32
        assert np.array_equal(got, want['pixel_values'].numpy())
    with pytest.raises(ImageError) as err:
        backend.preprocess(np.zeros((64, 64, 3), dtype=np.uint8))
    assert str(err.value) == ('image of 64x64 gives the Qwen patch grid [1, 8, 8], the bundle was '
                              'exported for 480x640 frames (grid [1, 6, 8]): re-export it with '
                              '--camera-size 64x64')


@pytest.mark.parametrize('family', FAMILIES)
def test_positions_equal_get_rope_index(family, qwen, loaded, frames):
    """Prefill positions per prompt and decode positions (index + rope delta) equal HF's."""
    import torch
    from ros2_gmskip.runtime.qwen import extend_positions
    from ros2_gmskip.vlm.families import decode_positions, position_ids
    from ros2_gmskip.vlm.prompting import build_inputs
    model, processor = loaded(family)
    backend = _backend(qwen, family)
    for prompt in PROMPTS:
        inputs = build_inputs(processor, [frames[0]], prompt)
        want, delta = position_ids(model, inputs)                          # (3, 1, T)
        ids = backend.tokenizer.prompt_ids(prompt)
        got = backend.prompt_positions(ids)
        assert np.array_equal(got, want[:, 0].numpy())
        T = got.shape[1]
        table = extend_positions(got, T + 5)
        for k in range(5):
            step = decode_positions(model, torch.tensor([[T + k]]), delta)   # (3, 1, 1)
            assert np.array_equal(table[:, T + k], step[:, 0, 0].numpy())
        assert int(delta) == backend.bundle.manifest.mrope.rope_delta


@pytest.mark.parametrize('graph', ['portable', 'fused'])
def test_the_decoder_graphs_read_all_three_position_rows(qwen, graph):
    """The logits checks can fail: plain positions (the t row three times) change the logits."""
    backend = _backend(qwen, 'qwen2_vl', graph=graph)
    ids = backend.tokenizer.prompt_ids(PROMPTS[0])
    embeds = backend.embed_table[ids][None]
    mrope = backend.prompt_positions(ids)
    plain = np.repeat(mrope[:1], 3, axis=0)
    runner = backend.decoder_loop.runners[0]
    a = runner.prefill(embeds, mrope).out.copy()
    b = runner.prefill(embeds, plain).out
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize('family', FAMILIES)
def test_onnxruntime_text_equals_generate(family, qwen, loaded, frames):
    """Greedy text of both graphs == transformers generate, for prompts of different lengths."""
    from ros2_gmskip.vlm.generation import generate_texts
    model, processor = loaded(family)
    backends = [_backend(qwen, family), _backend(qwen, family, graph='portable')]
    assert [b.info.decoder_graph for b in backends] == ['fused', 'portable']
    for prompt in PROMPTS:
        want = generate_texts(model, processor, frames, prompt, max_new_tokens=NEW_TOKENS)
        for backend in backends:
            got = [backend.describe(f, prompt, NEW_TOKENS).text for f in frames]
            assert got == want, backend.info.decoder_graph
    assert len(set(want)) > 1, 'every frame gave the same text: the test could not see images'


class _Guess:
    """Propose the token ids 5, 6, 7 after anything (mostly refused guesses)."""

    def propose(self, history, k: int, stop_ids=frozenset()) -> list[int]:
        return [5, 6, 7][:k]


@pytest.mark.parametrize('graph', ['portable', 'fused'])
def test_drafted_tokens_keep_the_greedy_text(qwen, frames, graph):
    """Speculative runs feed (3, rows) position slices: same text as one token per run."""
    backend = _backend(qwen, 'qwen2_5_vl', graph=graph)
    plain = [backend.describe(f, PROMPTS[0], NEW_TOKENS).text for f in frames]
    loop = backend.decoder_loop
    loop.draft, loop.draft_tokens = _Guess(), 3
    assert loop.speculative
    assert [backend.describe(f, PROMPTS[0], NEW_TOKENS).text for f in frames] == plain


def test_one_row_step_graph_keeps_the_text(qwen, loaded, frames, tmp_path):
    """
    Decode steps rotate every row alike, so the quantized step graphs' one-row positions work.

    `--fused-weights int4` builds its step graph this way (GroupQueryAttention rotates the new
    row at position_ids (1, n)); here the same graph in fp32, so the text must not change.
    """
    import onnxruntime as ort
    from ros2_gmskip.exporters.fused_decoder import build_fused_graph
    from ros2_gmskip.runtime.decode import DecodeLoop
    from ros2_gmskip.runtime.ort_runners import FusedRunner
    model, _ = loaded('qwen2_vl')
    backend = _backend(qwen, 'qwen2_vl')
    m = backend.bundle.manifest
    seg = m.segments[0]
    build_fused_graph(model, tmp_path / 'step.onnx', m.fused.max_length, seg, 'step')
    step = ort.InferenceSession(str(tmp_path / 'step.onnx'), backend.options)
    assert [i.shape for i in step.get_inputs() if i.name == 'position_ids'] == [[1, 'seq']]
    runner = FusedRunner(seg, backend.decoder_loop.runners[0].prefill_session, step, 'explicit',
                         m.fused.max_length, m.decoder.num_kv_heads, m.decoder.head_dim,
                         m.fused.attention_scale)
    want = [backend.describe(f, PROMPTS[1], NEW_TOKENS).text for f in frames]
    backend.decoder_loop = DecodeLoop([runner], backend.embed_table, backend.tokenizer.stop_ids)
    assert [backend.describe(f, PROMPTS[1], NEW_TOKENS).text for f in frames] == want


def test_refusals_are_one_line(qwen, tmp_path):
    """Token skipping and TensorRT are refused for Qwen bundles, in one line."""
    from ros2_gmskip.bundle_format import load_bundle
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.runtime.qwen import check_tensorrt
    from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip
    fastv = TokenSkip(fastv=FastVConfig(k=1, r=0.5))
    with pytest.raises(BundleError) as err:
        export_bundle(qwen['qwen2_vl']['dir'], tmp_path / 'b', tokens=fastv, validate_n=0)
    assert 'token skipping (FastV' in str(err.value) and '\n' not in str(err.value)
    assert not (tmp_path / 'b').exists()
    with pytest.raises(BundleError, match='not supported for qwen2_vl bundles yet'):
        _backend(qwen, 'qwen2_vl', token_skip=fastv)
    bundle = load_bundle(qwen['qwen2_5_vl']['bundle'])
    with pytest.raises(EngineError, match='use --backend onnxruntime'):
        check_tensorrt(bundle.manifest, bundle.where())


def test_manifest_round_trips(qwen):
    """The `mrope` record is read back as written (tuples, not lists)."""
    from ros2_gmskip.bundle_format import read_manifest
    path = Path(qwen['qwen2_vl']['bundle'])
    m = read_manifest(path)
    assert m.mrope == qwen['qwen2_vl']['result'].manifest.mrope
    assert m.to_dict()['mrope']['grid_thw'] == [1, 6, 8]


def test_a_grid_that_disagrees_with_the_image_tokens_is_refused(qwen, tmp_path):
    """The manifest's `mrope` is checked against its token count on load, in one line."""
    import json
    import shutil
    from ros2_gmskip.bundle_format import load_bundle
    bundle = shutil.copytree(qwen['qwen2_vl']['bundle'], tmp_path / 'b')
    data = json.loads((bundle / 'manifest.json').read_text())
    data['mrope']['grid_thw'] = [1, 8, 8]
    (bundle / 'manifest.json').write_text(json.dumps(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle)
    assert 'mrope grid [1, 8, 8] does not make 12 image tokens' in str(err.value)
    assert '\n' not in str(err.value)


def test_a_run_of_image_tokens_that_is_not_whole_images_is_refused():
    """The prompt template's image tokens must make whole images of the exported grid."""
    from ros2_gmskip.runtime.qwen import prompt_positions
    ids = np.array([5, 9, 9, 9, 5])
    with pytest.raises(ImageError, match='a run of 3 image tokens, not a multiple of the 12'):
        prompt_positions(ids, 9, (1, 6, 8), 2)
    two = prompt_positions(np.array([5] + [9] * 24 + [5]), 9, (1, 6, 8), 2)
    assert two[:, 13].tolist() == [5, 5, 5] and two[:, -1].tolist() == [9, 9, 9]
