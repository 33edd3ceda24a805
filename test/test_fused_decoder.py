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

"""decoder.fused.onnx: the ONNX Runtime-only decoder (contrib ops, KV cache updated in place)."""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from ros2_gmskip.bundle_format import load_bundle
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
import torch

torch.set_num_threads(1)


def _backend(bundle: Path, **kwargs):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    return OrtBackend(bundle, threads=1, **kwargs)


@pytest.fixture(scope='module')
def fused(tiny_pruned_bundle):
    return _backend(tiny_pruned_bundle)


@pytest.fixture(scope='module')
def portable(tiny_pruned_bundle):
    return _backend(tiny_pruned_bundle, graph='portable')


def test_export_writes_and_records_the_fused_graph(tiny_pruned_bundle):
    m = load_bundle(tiny_pruned_bundle).manifest
    [segment] = m.segments
    assert segment.fused == 'decoder.fused.onnx' and segment.fused in m.files
    assert (segment.first, segment.stop) == (0, m.decoder.num_layers) == (0, 2)  # 1, 3 gone
    assert m.fused.max_length == 128                          # the tiny model's max positions
    assert m.fused.nodes == 10 * 2 + 3                # 10 per block; final norm, slice, lm_head
    assert 'GroupQueryAttention' in m.fused.ops and m.fused.positions == 'cache'
    checks = m.validation['checks']
    assert any(c.startswith('✓ fused decoder logits') for c in checks)
    assert any(c.startswith('✓ fused decoder greedy text: 3/3') for c in checks)
    assert m.validation['fused_identical_text'] == '3/3'


def test_auto_runs_the_fused_graph_and_matches_the_portable_one(fused, portable, scene_images):
    assert fused.info.decoder_graph == 'fused'
    assert portable.info.decoder_graph == 'portable'
    for image in scene_images:
        a = fused.describe(image, DEFAULT_PROMPT, 16)
        b = portable.describe(image, DEFAULT_PROMPT, 16)
        assert (a.text, a.tokens) == (b.text, b.tokens)
        assert a.latency.decode_tokens == b.latency.decode_tokens


def test_logits_match_the_portable_graph_step_by_step(fused, portable, scene_images):
    """Prefill, then 5 forced tokens: the fused runner's in-place cache gives the same logits."""
    ids = fused.tokenizer.prompt_ids(DEFAULT_PROMPT)
    embeds = fused.prompt_embeds(ids, fused.image_embeds(fused.preprocess(scene_images[0]))[0])
    T = embeds.shape[1]
    [mine], [ref] = fused.decoder_loop.runners, portable.decoder_loop.runners
    positions = np.arange(T + 8)
    np.testing.assert_allclose(mine.prefill(embeds, positions[:T]).out,
                               ref.prefill(embeds, positions[:T]).out, atol=1e-4)
    for n, token in enumerate([5, 7, 9, 11, 13], start=1):
        e = fused.embed_table[token][None, None]
        at = positions[T + n - 1:T + n]
        np.testing.assert_allclose(mine.run(e, at, T + n - 1), ref.run(e, at, T + n - 1),
                                   atol=1e-4)
        if n == 5:                                 # the buffers hold exactly the portable cache
            for array, present in zip(mine.arrays, ref.past):
                np.testing.assert_allclose(array[:, :, :T + n], present.numpy(), atol=1e-5)


def test_stale_cache_rows_of_an_earlier_request_are_never_read(tiny_pruned_bundle, fused,
                                                               scene_images):
    long_first = fused.describe(scene_images[1], DEFAULT_PROMPT, 40)      # fills more rows
    second = fused.describe(scene_images[2], DEFAULT_PROMPT, 8)
    fresh = _backend(tiny_pruned_bundle).describe(scene_images[2], DEFAULT_PROMPT, 8)
    assert long_first.tokens > 0
    assert (second.text, second.tokens) == (fresh.text, fresh.tokens)


def test_a_request_longer_than_the_buffers_runs_on_the_portable_graph(tiny_pruned_bundle,
                                                                      scene_images, portable):
    backend = _backend(tiny_pruned_bundle)
    loop = backend.decoder_loop
    calls = []
    run = loop.fallback.generate
    loop.fallback.generate = lambda *a, **k: calls.append(a) or run(*a, **k)
    ids = backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    loop.max_length = len(ids) + 4                 # prompt + 4 tokens fit, 5 do not
    backend.describe(scene_images[0], DEFAULT_PROMPT, 4)
    assert calls == []
    got = backend.describe(scene_images[0], DEFAULT_PROMPT, 5)
    assert len(calls) == 1
    want = portable.describe(scene_images[0], DEFAULT_PROMPT, 5)
    assert (got.text, got.tokens) == (want.text, want.tokens)


def _without_fused(src: Path, dst: Path) -> Path:
    bundle = Path(shutil.copytree(src, dst))
    manifest = json.loads((bundle / 'manifest.json').read_text())
    manifest['fused'] = None
    for seg in manifest['segments']:
        seg.update(fused=None, fused_prefill=None, fused_step=None)
    (bundle / 'manifest.json').write_text(json.dumps(manifest))
    return bundle


def test_graph_choice_errors(tiny_pruned_bundle, tmp_path):
    older = _without_fused(tiny_pruned_bundle, tmp_path / 'older')
    assert _backend(older).info.decoder_graph == 'portable'             # auto falls back
    with pytest.raises(BundleError, match=r'has no fused decoder graph .*re-run ros2-gmskip '
                                          r'export$'):
        _backend(older, graph='fused')
    with pytest.raises(ValueError, match='graph must be one of auto, fused, portable'):
        _backend(tiny_pruned_bundle, graph='fast')


def test_token_skipping_on_a_plain_bundle_runs_on_the_portable_graph(tiny_pruned_bundle):
    """
    Check token skipping asked of a plain bundle falls back to decoder.onnx or is refused.

    A plain bundle's fused graph takes RoPE positions from the cache length, so token skipping
    asked of it at run time falls back to decoder.onnx (auto) or is refused (fused).
    """
    from ros2_gmskip.tokenskip.settings import TokenSkip
    skip = TokenSkip(kv_ratio=0.5)
    assert _backend(tiny_pruned_bundle, token_skip=skip).info.decoder_graph == 'portable'
    with pytest.raises(BundleError, match='skips tokens .*exported without token skipping'):
        _backend(tiny_pruned_bundle, token_skip=skip, graph='fused')


def test_manifest_entry_naming_an_unlisted_file_is_refused(tiny_pruned_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_pruned_bundle, tmp_path / 'b'))
    manifest = json.loads((bundle / 'manifest.json').read_text())
    manifest['segments'][0]['fused'] = 'other.onnx'
    (bundle / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest segment 0 names unlisted \['other.onnx'\]: "
                                          're-run ros2-gmskip export'):
        load_bundle(bundle)


def test_corrupt_fused_graph_is_a_one_line_error(tiny_pruned_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_pruned_bundle, tmp_path / 'b'))
    (bundle / 'decoder.fused.onnx').write_bytes(b'not onnx')
    with pytest.raises(BundleError, match='decoder.fused.onnx sha256 mismatch'):
        _backend(bundle)


def test_unsupported_models_get_no_fused_graph(tiny_model_dir, tmp_path):
    from ros2_gmskip.bundle_format import Segment
    from ros2_gmskip.exporters.fused_decoder import build_fused_graph, fused_unsupported
    from ros2_gmskip.vlm.loading import load_vlm

    model, _ = load_vlm(tiny_model_dir)
    whole = Segment(first=0, stop=4, last=True, ranks=False, portable='decoder.onnx')
    assert fused_unsupported(model) is None
    model.model.language_model.config.sliding_window = 16
    assert fused_unsupported(model) == 'sliding-window attention'
    with pytest.raises(ValueError, match='no fused decoder for this model: sliding-window'):
        build_fused_graph(model, tmp_path / 'f.onnx', 64, whole)
    model.model.language_model.config.sliding_window = None
    cfg = model.model.language_model.config
    head_dim = cfg.head_dim
    cfg.head_dim = 8
    assert fused_unsupported(model).startswith('head_dim 8 is not a multiple of 16')
    cfg.head_dim = head_dim
    model.model.language_model.layers[0].mlp.config.hidden_act = 'gelu'
    assert fused_unsupported(model) == "block 0 MLP activation 'gelu' is not SiLU"


def test_export_no_fused_flag(tiny_model_dir, tmp_path, capsys):
    from ros2_gmskip.cli import main
    out = tmp_path / 'b'
    assert main(['export', '--model', str(tiny_model_dir), '--out', str(out), '--no-fused',
                 '--validate-n', '1', '--max-new-tokens', '4', '--threads', '1']) == 0
    assert not (out / 'decoder.fused.onnx').exists()
    assert load_bundle(out).manifest.fused is None
    assert _backend(out).info.decoder_graph == 'portable'
    assert 'decoder.fused.onnx' not in capsys.readouterr().out


def test_describe_cli_names_and_chooses_the_decoder_graph(tiny_pruned_bundle, scene_images,
                                                          tmp_path, capsys):
    from PIL import Image
    from ros2_gmskip.cli import main
    image = tmp_path / 'frame.png'
    Image.fromarray(scene_images[0]).save(image)
    texts = {}
    for graph in ('auto', 'portable'):
        assert main(['describe', str(image), '--bundle', str(tiny_pruned_bundle), '--ort-graph',
                     graph, '--max-new-tokens', '8']) == 0
        text, timing = capsys.readouterr().out.strip().splitlines()[-2:]
        texts[graph] = text
        want = f'{"fused" if graph == "auto" else "portable"}, 4 draft tokens per run'
        assert timing.startswith(f'backend onnxruntime (decoder: {want}): preprocess ')
    assert texts['auto'] == texts['portable']
    assert main(['describe', str(image), '--bundle', str(tiny_pruned_bundle), '--draft-tokens',
                 '0', '--max-new-tokens', '8']) == 0
    text, timing = capsys.readouterr().out.strip().splitlines()[-2:]
    assert text == texts['auto'] and timing.startswith('backend onnxruntime (decoder: fused): ')


def test_describe_fused_weights_exports_the_quantized_bundle(int4_bundle, tiny_pruned_bundle,
                                                             scene_images, tmp_path, capsys,
                                                             monkeypatch):
    """
    Check `describe --fused-weights int4` asks the cache for the quantized export and runs it.

    Here the int4 fixture bundle stands in for that export; with --bundle it is a one-line error.
    """
    from PIL import Image
    from ros2_gmskip.cli import main
    from ros2_gmskip.runtime import defaults
    asked = []
    monkeypatch.setattr(defaults, 'ensure_bundle',
                        lambda *a, **k: asked.append(k['fused_weights']) or int4_bundle)
    image = tmp_path / 'frame.png'
    Image.fromarray(scene_images[0]).save(image)
    assert main(['describe', str(image), '--fused-weights', 'int4', '--max-new-tokens', '4']) == 0
    assert asked == ['int4']
    timing = capsys.readouterr().out.strip().splitlines()[-1]
    assert timing.startswith('backend onnxruntime (decoder: fused, int8 prefill, int4 decode '
                             'steps, 4 draft tokens per run): ')
    assert main(['describe', str(image), '--fused-weights', 'int4', '--bundle',
                 str(tiny_pruned_bundle)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'a given bundle carries its own' in err[0]


@pytest.fixture(scope='module')
def int4_bundle(tiny_model_dir, make_plan, tmp_path_factory) -> Path:
    """
    Export the tiny model without blocks 1 and 3, with int4-weight decode steps.

    The greedy check is off: a random tiny model's near-flat logits say nothing about
    quantization.
    """
    from ros2_gmskip.exporters.onnx_export import export_bundle
    folder = tmp_path_factory.mktemp('int4')
    plan = make_plan(tiny_model_dir, [1, 3], folder / 'plan.json')
    out = folder / 'bundle'
    export_bundle(tiny_model_dir, out, plan=plan, validate_n=0, threads=1, fused_weights='int4')
    return out


def test_int4_decode_graph_is_recorded_and_quantizes_every_matmul(int4_bundle):
    import onnx
    m = load_bundle(int4_bundle).manifest
    [segment] = m.segments
    assert segment.fused_step == 'decoder.fused.int4.onnx' and segment.fused_step in m.files
    assert m.fused.step_weights == 'int4' and m.fused.prefill_weights == 'int8'
    q = m.fused.quantization
    assert (q['op'], q['bits'], q['block_size'], q['accuracy_level']) == ('MatMulNBits', 4, 32, 4)
    ops = [n.op_type for n in onnx.load(str(int4_bundle / segment.fused_step)).graph.node]
    assert q['matmuls'] == ops.count('MatMulNBits') == 4 * 2 + 1     # 4 per block + lm_head
    assert 'MatMul' not in ops


def test_int4_bundle_runs_int8_prefill_and_int4_steps(int4_bundle, tiny_pruned_bundle,
                                                      scene_images):
    import onnx
    quant, exact = _backend(int4_bundle), _backend(tiny_pruned_bundle)
    assert quant.info.decoder_graph == 'fused, int8 prefill, int4 decode steps'
    [segment] = quant.bundle.manifest.segments
    assert segment.fused_prefill == 'decoder.fused.prefill.int8.onnx'
    assert segment.fused_prefill in quant.bundle.manifest.files
    ops = [n.op_type for n in onnx.load(str(int4_bundle / segment.fused_prefill)).graph.node]
    assert ops.count('MatMulInteger') == 4 * 2 + 1 and 'MatMul' not in ops
    [runner], [ref] = quant.decoder_loop.runners, exact.decoder_loop.runners
    assert runner.step_session is not runner.prefill_session
    ids = quant.tokenizer.prompt_ids(DEFAULT_PROMPT)
    embeds = quant.prompt_embeds(ids, quant.image_embeds(quant.preprocess(scene_images[0]))[0])
    T = embeds.shape[1]
    step, at = quant.embed_table[5][None, None], np.array([T])
    for got, want in ((runner.prefill(embeds, np.arange(T)).out[0, -1],
                       ref.prefill(embeds, np.arange(T)).out[0, -1]),
                      (runner.run(step, at, T)[0, -1], ref.run(step, at, T)[0, -1])):
        assert np.abs(got - want).max() > 0                        # other weights ...
        assert np.corrcoef(got, want)[0, 1] > 0.95                   # ... same function
    assert quant.describe(scene_images[0], DEFAULT_PROMPT, 8).tokens > 0
    fp32 = _backend(int4_bundle, quantized=False)           # what export validation compares
    assert fp32.info.decoder_graph == 'fused'
    np.testing.assert_array_equal(fp32.decoder_loop.runners[0].prefill(embeds, np.arange(T)).out,
                                  ref.prefill(embeds, np.arange(T)).out)


def test_quantized_agreement_threshold(tiny_model_dir, tmp_path, monkeypatch):
    from ros2_gmskip.exporters import onnx_export, validate
    monkeypatch.setattr(validate, 'MIN_QUANTIZED_AGREEMENT', 1.01)     # no run can meet it
    with pytest.raises(BundleError, match=r'fused decoder greedy text \(fused, int8 prefill, '
                                          r'int4 decode steps\): \d/2 test scenes identical '
                                          r'.*at least 101% needed'):
        onnx_export.export_bundle(tiny_model_dir, tmp_path / 'a', validate_n=2,
                                  max_new_tokens=4, threads=1, fused_weights='int4')
    monkeypatch.setattr(validate, 'MIN_QUANTIZED_AGREEMENT', 0.0)
    onnx_export.export_bundle(tiny_model_dir, tmp_path / 'b', validate_n=2, max_new_tokens=4,
                              threads=1, fused_weights='int4')
    recorded = load_bundle(tmp_path / 'b').manifest.validation['fused_identical_text']
    assert recorded.endswith('/2')


def test_fused_weights_errors(tiny_model_dir, tmp_path):
    from ros2_gmskip.exporters.onnx_export import export_bundle
    with pytest.raises(BundleError, match='cannot go with --no-fused'):
        export_bundle(tiny_model_dir, tmp_path / 'a', fused=False, fused_weights='int4')
    with pytest.raises(BundleError, match="weights must be one of fp32, int8, int4, got 'int2'"):
        export_bundle(tiny_model_dir, tmp_path / 'a', fused_weights='int2')
    assert not (tmp_path / 'a').exists()


def test_cached_bundles_are_keyed_by_the_decode_weights(tiny_model_dir, tmp_path):
    from ros2_gmskip.runtime.defaults import bundle_cache_path
    from ros2_gmskip.runtime.draft import DRAFT_FILE
    assert bundle_cache_path(tiny_model_dir, None) == bundle_cache_path(tiny_model_dir, None,
                                                                        None, 'fp32')
    assert bundle_cache_path(tiny_model_dir, None, None, 'int4') != \
        bundle_cache_path(tiny_model_dir, None)
    # and by the draft table: a rebuilt table means a new export
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / 'm'))
    before = bundle_cache_path(model, None)
    draft = (model / DRAFT_FILE).read_text()
    (model / DRAFT_FILE).write_text(draft.replace('"order"', '"order" '))
    assert bundle_cache_path(model, None) != before


def test_ensure_bundle_exports_quantized_decode_steps_with_enough_scenes(tiny_model_dir,
                                                                         tmp_path, monkeypatch):
    import subprocess

    from ros2_gmskip.runtime import defaults
    monkeypatch.setenv('ROS2_GMSKIP_CACHE', str(tmp_path))
    calls = []

    def run(cmd, **kwargs):                      # stands in for the export subprocess
        calls.append(cmd)
        out = Path(cmd[cmd.index('--out') + 1])
        out.mkdir(parents=True)
        (out / 'manifest.json').write_text('{}')
        return subprocess.CompletedProcess(cmd, 0, '')

    monkeypatch.setattr(defaults.subprocess, 'run', run)
    path = defaults.ensure_bundle(tiny_model_dir, None, full=True, fused_weights='int4')
    assert path == defaults.bundle_cache_path(tiny_model_dir, None, None, 'int4')
    cmd = calls[0]
    assert cmd[cmd.index('--fused-weights') + 1] == 'int4'
    assert cmd[cmd.index('--validate-n') + 1] == str(defaults.QUANTIZED_VALIDATE_N)
    defaults.ensure_bundle(tiny_model_dir, None, full=True)                 # fp32: its own folder
    assert '--fused-weights' not in calls[1]
    assert calls[1][calls[1].index('--validate-n') + 1] == '5'
