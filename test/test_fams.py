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
Families through export, ONNX Runtime and replay: LLaVA-1.5, SmolVLM / Idefics3; the refusals.

Tiny random checkpoints (vlm/tiny_families.py) are built and exported once per session; the
export's own validation (names, axes, shapes, values, greedy text == transformers generate, the
TensorRT op lint) is what the export tests read back, so a failing check fails them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ros2_gmskip.errors import BundleError, ImageError, ModelLoadError
from ros2_gmskip.vlm.tiny_families import BUILDERS

CAMERA = (48, 64)                  # the replay bag's frames: SmolVLM's grid is fixed for these
EXPORTED = ('llava', 'smolvlm', 'paligemma')


@pytest.fixture(scope='session')
def fam_dirs(tiny_checkpoint) -> dict[str, Path]:
    """Return {family: tiny checkpoint folder} for the families exported or refused here."""
    return {f: tiny_checkpoint(f) for f in EXPORTED}


@pytest.fixture(scope='session')
def bundles(fam_dirs, tmp_path_factory) -> dict[str, object]:
    """Return {family: ExportResult}: each exported once, validated on 3 scenes."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    root = tmp_path_factory.mktemp('fam_bundles')
    return {f: export_bundle(fam_dirs[f], root / f, validate_n=3, max_new_tokens=6, threads=1,
                             camera_size=CAMERA) for f in EXPORTED}


def _processor(path: Path):
    from ros2_gmskip.vlm.processors import load_processor
    return load_processor(path)


@pytest.mark.parametrize('family', ['idefics3', 'smolvlm'])
def test_tiles_are_bit_identical_to_the_processor(family, fam_dirs):
    """Pixels, grid and the image's prompt text, on frames of several sizes and aspects."""
    from ros2_gmskip.runtime.geometry import from_image_processor
    from ros2_gmskip.runtime.tiles import image_prompt, TilePreprocessor
    processor = _processor(fam_dirs[family]) if family in fam_dirs else BUILDERS[family]()[1]
    ip = processor.image_processor
    mine = from_image_processor(ip)
    assert isinstance(mine, TilePreprocessor)
    grids = set()
    for height, width in ((48, 64), (480, 640), (640, 480), (16, 16), (20, 90), (300, 1000),
                          (33, 17)):
        rng = np.random.default_rng(height * width)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        want = ip([[image]], return_tensors='np', return_row_col_info=True)
        grid = (want['rows'][0][0], want['cols'][0][0])
        grids.add(grid)
        assert mine.grid_of(height, width) == grid
        pixels = mine(image)
        assert pixels.dtype == want['pixel_values'].dtype
        assert np.array_equal(pixels, want['pixel_values'][0]), (height, width)
        assert image_prompt(*grid, processor.image_seq_len) == processor.replace_image_token(
            {'rows': [[grid[0]]], 'cols': [[grid[1]]]}, 0)
    assert len(grids) >= 3             # the sizes above do reach different grids


@pytest.mark.parametrize('family', EXPORTED)
def test_export_validates_against_transformers(family, bundles):
    """Every check passed: bit-identical pixels, prompt ids, values, greedy text == generate."""
    m = bundles[family].manifest
    checks = m.validation['checks']
    assert m.validation['passed'] and all(line.startswith('✓') for line in checks)
    assert m.validation['identical_text'] == '3/3'
    if family != 'paligemma':
        assert m.validation['fused_identical_text'] == '3/3'
    assert any(line.startswith('✓ preprocess: max |runtime - HF processor| 0.0e+00')
               for line in checks)
    assert sum('TensorRT ops' in line for line in checks) == 2      # vision + decoder linted
    if family == 'llava':
        assert (m.preprocess.shortest_edge, m.preprocess.size, m.preprocess.tiles) == (
            32, (32, 32), None)
        assert m.tokens.num_image_tokens == 16
    elif family == 'paligemma':            # no fused graph: GroupQueryAttention is causal only
        assert m.fused is None and m.validation['fused_identical_text'] is None
        assert m.tokens.prompt_template == '<image>' * 16 + '<bos>{prompt}\n'
    else:
        tiles = m.preprocess.tiles
        assert (tiles.camera, tiles.grid, m.preprocess.size) == (CAMERA, (2, 2), (16, 16))
        assert m.tokens.num_image_tokens == 5 * 4          # 4 tiles + the global image
        assert m.tokens.prompt_template.count('<row_') == 4
        assert m.graphs['vision'].outputs[0].shape == ('batch', 4, 32)


def test_a_frame_with_another_tile_grid_is_refused_in_one_line(bundles):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    backend = OrtBackend(bundles['smolvlm'].path, threads=1)
    with pytest.raises(ImageError) as err:
        backend.describe(np.zeros((48, 200, 3), np.uint8), max_new_tokens=2)
    assert str(err.value) == ('frame of 48x200 is cut into 1x2 tiles, the bundle was exported '
                              'for 2x2 (camera 48x64): send frames of that size or re-export '
                              'with --camera-size')
    assert backend.describe(np.zeros((96, 128, 3), np.uint8), max_new_tokens=2).tokens >= 1


@pytest.mark.parametrize('family,missing', [('gemma3', 'token_type_ids'),
                                            ('llava_onevision', 'anyres')])
def test_unexported_families_are_refused_in_one_line(family, missing, tmp_path):
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from safetensors.numpy import save_file
    model, _ = BUILDERS[family]()
    (tmp_path / 'm').mkdir()
    (tmp_path / 'm' / 'config.json').write_text(model.config.to_json_string())
    save_file({'x': np.zeros(1, np.float32)}, tmp_path / 'm' / 'model.safetensors')   # unread
    with pytest.raises(ModelLoadError) as err:
        export_bundle(tmp_path / 'm', tmp_path / 'out')
    text = str(err.value)
    assert text.startswith(f'export of {family} is not supported yet: it needs ')
    assert missing in text and '\n' not in text
    assert not (tmp_path / 'out').exists()


def test_smolvlm_token_skipping_equals_the_torch_reference(fam_dirs, tmp_path):
    """Export with FastV + visual KV removal: greedy text == tokenskip's torch reference."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip
    tokens = TokenSkip(fastv=FastVConfig(k=1, r=0.5), kv_ratio=0.5, kv_start=2)
    m = export_bundle(fam_dirs['smolvlm'], tmp_path / 'b', validate_n=2, max_new_tokens=6,
                      threads=1, camera_size=CAMERA, tokens=tokens).manifest
    assert len(m.segments) == 3 and m.validation['passed']
    assert m.validation['identical_text'] == m.validation['fused_identical_text'] == '2/2'
    assert any('identical to the torch reference with FastV K=1 R=0.5, KV removal 50% from '
               'layer 2' in line for line in m.validation['checks'])


def test_paligemma_token_skipping_is_refused_in_one_line(fam_dirs, tmp_path):
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip
    with pytest.raises(BundleError, match="tokenskip's torch reference, which does not support "
                                          'paligemma: export without --fastv / --kv-removal$'):
        export_bundle(fam_dirs['paligemma'], tmp_path / 'out', validate_n=0,
                      tokens=TokenSkip(fastv=FastVConfig(k=1, r=0.5)))


def test_paligemma_prefix_sees_itself_whole_only_in_the_prefill():
    """The prefix-LM mask: bidirectional with no cache, causal once rows follow a cache."""
    import torch
    from ros2_gmskip.vlm.llama_block import hidden_keys
    keys = torch.tensor([[0, 1, 1, 1]])                        # one left-padding slot
    prefill = ~hidden_keys(keys, 4, prefix_lm=True)[0, 0]
    assert prefill.tolist() == [[False, True, True, True]] * 4
    after = ~hidden_keys(keys, 2, prefix_lm=True)[0, 0]       # 2 cached + 2 new rows
    assert after.tolist() == [[False, True, True, False], [False, True, True, True]]
    assert torch.equal(hidden_keys(keys, 2, prefix_lm=True), hidden_keys(keys, 2))


@pytest.mark.parametrize('family', EXPORTED)
def test_replay_runs_the_exported_family(family, bundles, tmp_path, capsys):
    """The node's path (DescriberCore) through `replay --bundle`, frames at the camera size."""
    from ros2_gmskip import cli
    from ros2_gmskip.ros.bag import make_bag
    bag = tmp_path / 'bag'
    make_bag(bag, n=3, fps=10.0, storage='sqlite3', progress=False, width=CAMERA[1],
             height=CAMERA[0])
    rc = cli.main(['replay', str(bag), '--out', str(tmp_path / 'out'), '--storage', 'sqlite3',
                   '--backend', 'onnxruntime', '--bundle', str(bundles[family].path),
                   '--json', '--no-progress', '--max-new-tokens', '3'])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0
    assert summary['described'] == 3 and summary['errors'] == summary['rejected'] == 0
    assert summary['backend'] == 'onnxruntime'
    assert summary['model_id'] == bundles[family].manifest.model_id


def test_tensorrt_vision_profile_counts_a_frames_tiles(bundles):
    """Check that SmolVLM's vision engine takes 2x2 tiles + the global image per image."""
    from ros2_gmskip.runtime.trt_profiles import Limits, vision_profiles
    smol, = vision_profiles(bundles['smolvlm'].manifest, Limits(max_batch=2))
    pixels = smol.shapes['pixel_values']
    assert (pixels.min_shape, pixels.opt_shape, pixels.max_shape) == (
        (5, 3, 16, 16), (5, 3, 16, 16), (10, 3, 16, 16))
    llava, = vision_profiles(bundles['llava'].manifest, Limits(max_batch=2))
    assert llava.shapes['pixel_values'].min_shape == (1, 3, 32, 32)
