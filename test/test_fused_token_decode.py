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
Token skipping on the fused ONNX Runtime decoder.

One explicit-position fused graph per decoder segment, FastV ranking from the exported query, KV
removal by compacting the in-place buffers.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pytest
from ros2_gmskip.bundle_format import load_bundle
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip
import torch

torch.set_num_threads(1)
NEW = 12
# FastV after block 1 (K=2) and half the visual KV entries dropped from block 3 on: three
# segments, [0, 2) ranks, [2, 3) keeps its visual entries, [3, 4) compacts its buffers.
SKIP = TokenSkip(FastVConfig(k=2, r=0.5), kv_ratio=0.5, kv_start=3)


def _export(model_dir: Path, out: Path, **kw) -> Path:
    from ros2_gmskip.exporters.onnx_export import export_bundle
    export_bundle(model_dir, out, tokens=SKIP, max_new_tokens=NEW, threads=1, **kw)
    return out


def _backend(bundle: Path, **kwargs):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    return OrtBackend(bundle, threads=1, **kwargs)


@pytest.fixture(scope='module')
def skip_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """Export validation must pass: both graphs' greedy text == the torch reference."""
    return _export(tiny_model_dir, tmp_path_factory.mktemp('fused_tokens') / 'b', validate_n=3)


@pytest.fixture(scope='module')
def fused(skip_bundle):
    return _backend(skip_bundle)


@pytest.fixture(scope='module')
def portable(skip_bundle):
    return _backend(skip_bundle, graph='portable')


def _prompt_embeds(backend, image) -> np.ndarray:
    ids = backend.tokenizer.prompt_ids(DEFAULT_PROMPT)
    return backend.prompt_embeds(ids, backend.image_embeds(backend.preprocess(image))[0]), ids


def test_manifest_records_one_fused_graph_per_segment(skip_bundle):
    import onnx
    m = load_bundle(skip_bundle).manifest
    assert [(s.first, s.stop) for s in m.segments] == [(0, 2), (2, 3), (3, 4)]
    assert [s.fused for s in m.segments] == ['decoder.fused.onnx', 'decoder.fused.1.onnx',
                                             'decoder.fused.2.onnx']
    assert all(s.fused in m.files for s in m.segments)
    assert [s.ranks for s in m.segments] == [True, False, False]
    assert m.fused.positions == 'explicit' and m.fused.attention_scale > 0
    ranking = onnx.load(str(skip_bundle / m.segments[0].fused)).graph
    assert [i.name for i in ranking.input][:2] == ['inputs_embeds', 'position_ids']
    assert {o.name for o in ranking.output} >= {'hidden_states', 'last_query'}
    assert 'RotaryEmbedding' in m.fused.ops
    v = m.validation
    assert v['fused_identical_text'] == '3/3'
    assert any(c.startswith('✓ fused decoder greedy text: 3/3 test scenes identical to the '
                            'torch reference with FastV K=2 R=0.5') for c in v['checks'])


def test_fused_segments_decode_like_the_portable_ones(fused, portable, scene_images):
    assert fused.info.decoder_graph == 'fused'
    assert portable.info.decoder_graph == 'portable'
    for image in scene_images:
        a = fused.describe(image, DEFAULT_PROMPT, NEW)
        b = portable.describe(image, DEFAULT_PROMPT, NEW)
        assert (a.text, a.tokens) == (b.text, b.tokens)


def test_ranking_attention_equals_the_portable_graphs(fused, portable, scene_images):
    """
    Check the FastV ranking attention of the fused graph equals the portable graph's.

    Numpy softmax over the fused graph's query and cached keys == the portable graph's in-graph
    last_token_attention.
    """
    embeds, ids = _prompt_embeds(fused, scene_images[1])
    T = embeds.shape[1]
    got = fused.decoder_loop.runners[0].prefill(embeds, np.arange(T)).attention
    want = portable.decoder_loop.runners[0].prefill(embeds, np.arange(T)).attention
    assert got.shape == want.shape == (T,)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-5)


def test_kv_removal_compacts_the_buffers_like_the_portable_gather(fused, portable, scene_images):
    embeds, ids = _prompt_embeds(fused, scene_images[2])
    image_rows = np.flatnonzero(ids == fused.tokenizer.image_token_id)
    f_logits, f_lengths = fused.decoder_loop._prefill(embeds, image_rows)
    p_logits, p_lengths = portable.decoder_loop._prefill(embeds, image_rows)
    np.testing.assert_allclose(f_logits, p_logits, atol=1e-4)
    T, n_img = len(ids), len(image_rows)
    assert f_lengths == p_lengths
    assert f_lengths[:2] == [T, T - n_img // 2]           # FastV pruned; no KV removal before 3
    assert f_lengths[2] < f_lengths[1]                    # block 3 dropped some kept image rows
    for runner, ref, length in zip(fused.decoder_loop.runners, portable.decoder_loop.runners,
                                   f_lengths):
        assert ref.length == length
        for buffer, present in zip(runner.arrays, ref.past):
            want = present if isinstance(present, np.ndarray) else present.numpy()
            np.testing.assert_allclose(buffer[:, :, :length], want, atol=1e-4)


def test_a_request_longer_than_the_buffers_runs_on_the_portable_segments(skip_bundle, fused,
                                                                         scene_images):
    loop = fused.decoder_loop
    calls = []
    original, limit = loop.fallback.generate, loop.max_length
    loop.fallback.generate = lambda *a, **k: calls.append(a) or original(*a, **k)
    # The buffers hold the model's whole context here, and a request past the context is
    # refused (runtime/requests.py): shorter buffers (export --fused-max-length) make room.
    loop.max_length = 40
    try:
        fused.describe(scene_images[0], DEFAULT_PROMPT, 30)      # prompt + 30 > 40 buffers
        fused.describe(scene_images[0], DEFAULT_PROMPT, 4)
    finally:
        loop.fallback.generate, loop.max_length = original, limit
    assert len(calls) == 1


def test_run_time_settings_the_segments_cannot_run_are_refused(skip_bundle):
    with pytest.raises(BundleError, match='no decoder split at FastV K=1'):
        _backend(skip_bundle, token_skip=TokenSkip(FastVConfig(k=1, r=0.5)))
    off = _backend(skip_bundle, token_skip=TokenSkip())          # unpruned, still fused
    assert off.info.decoder_graph == 'fused'


def test_segments_entry_that_does_not_match_is_refused(skip_bundle, tmp_path):
    bundle = Path(shutil.copytree(skip_bundle, tmp_path / 'b'))
    manifest = json.loads((bundle / 'manifest.json').read_text())
    manifest['segments'][1]['stop'] = 4
    (bundle / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r'segment 2 \[3, 4\] does not follow the one before'):
        load_bundle(bundle)


def test_head_averaged_attention_matches_torch():
    from ros2_gmskip.runtime.token_skip import head_averaged_attention
    rng = np.random.default_rng(0)
    H, KV, T, d = 6, 2, 9, 8
    q = rng.standard_normal(H * d).astype(np.float32)
    keys = rng.standard_normal((KV, T, d)).astype(np.float32)
    k = torch.from_numpy(keys).repeat_interleave(H // KV, dim=0)            # (H, T, d)
    want = torch.softmax(torch.from_numpy(q).view(H, 1, d) @ k.transpose(1, 2) / d ** 0.5,
                         dim=-1).mean(0)[0]
    np.testing.assert_allclose(head_averaged_attention(q, keys, d ** -0.5), want.numpy(),
                               atol=1e-6)


def test_int4_decode_steps_per_segment(tiny_model_dir, tmp_path, scene_images):
    """
    Check a quantized bundle has int4 decode steps and int8 prefill per segment.

    Per segment: an int4 MatMulNBits decode-step graph and a dynamic int8 prefill graph.
    """
    out = _export(tiny_model_dir, tmp_path / 'int4', validate_n=0, fused_weights='int4')
    m = load_bundle(out).manifest
    assert [s.fused_step for s in m.segments] == [
        'decoder.fused.int4.onnx', 'decoder.fused.1.int4.onnx', 'decoder.fused.2.int4.onnx']
    assert m.fused.quantization['matmuls'] == 4 * 4 + 1              # 4 per block + lm_head
    assert [s.fused_prefill for s in m.segments] == [
        'decoder.fused.prefill.int8.onnx', 'decoder.fused.1.prefill.int8.onnx',
        'decoder.fused.2.prefill.int8.onnx']
    backend = _backend(out)
    assert backend.info.decoder_graph == 'fused, int8 prefill, int4 decode steps'
    assert all(r.step_session is not r.prefill_session for r in backend.decoder_loop.runners)
    assert backend.describe(scene_images[0], DEFAULT_PROMPT, 6).tokens > 0
    _speculation_keeps_the_greedy_ids(out, scene_images)


def _speculation_keeps_the_greedy_ids(bundle: Path, images) -> None:
    """
    Check speculative steps through the segments give greedy's ids.

    With the bundle's own draft table the guesses are mostly refused; with the model's own outputs
    as the table, mostly kept.
    """
    from ros2_gmskip.runtime.draft import NgramDraft
    plain, fast = _backend(bundle, draft_tokens=0), _backend(bundle)
    assert not plain.decoder_loop.speculative and fast.decoder_loop.speculative
    image_id = plain.tokenizer.image_token_id
    embeds = [_prompt_embeds(plain, image) for image in images]
    want = [plain.decoder_loop.generate(e, NEW, np.flatnonzero(ids == image_id))
            for e, ids in embeds]
    guesses = [fast.decoder_loop.draft,
               NgramDraft.build([[*w.ids, 2] for w in want], order=6)]
    for fast.decoder_loop.draft in guesses:
        runs = 0
        for (e, ids), w in zip(embeds, want):
            got = fast.decoder_loop.generate(e, NEW, np.flatnonzero(ids == image_id))
            assert got.ids.tolist() == w.ids.tolist() and got.decode_steps == w.decode_steps
            runs += got.decode_runs
    assert runs < sum(w.decode_steps for w in want)        # the model's own guesses save runs


def test_speculative_steps_give_the_greedy_ids(skip_bundle, scene_images):
    _speculation_keeps_the_greedy_ids(skip_bundle, scene_images)


def test_step_graphs_rotate_at_the_given_positions(tiny_model_dir, skip_bundle, fused, tmp_path,
                                                   scene_images):
    """
    Check the decode-step variant built in fp32 decodes the same tokens as explicit RoPE.

    The variant (GroupQueryAttention's own RoPE at `position_ids`) is the one the quantized steps
    use; the reference is the explicit-RoPE graphs.
    """
    from ros2_gmskip.exporters.fused_decoder import build_fused_graph
    from ros2_gmskip.runtime.decode import DecodeLoop
    from ros2_gmskip.runtime.ort_runners import FusedRunner
    from ros2_gmskip.vlm.loading import load_vlm

    model = load_vlm(tiny_model_dir)[0]
    m = load_bundle(skip_bundle).manifest
    loop = fused.decoder_loop
    runners, ops = [], set()
    for i, (seg, runner) in enumerate(zip(m.segments, loop.runners)):
        path = tmp_path / f'step{i}.onnx'
        ops |= set(build_fused_graph(model, path, m.fused.max_length, seg, 'step')[1])
        runners.append(FusedRunner(seg, runner.prefill_session, fused._session(path),
                                   m.fused.positions, m.fused.max_length, m.decoder.num_kv_heads,
                                   m.decoder.head_dim, m.fused.attention_scale))
    assert 'RotaryEmbedding' not in ops and 'GroupQueryAttention' in ops
    assert 'last_query' not in {o.name for o in runners[0].step_session.get_outputs()}
    other = DecodeLoop(runners, fused.embed_table, fused.tokenizer.stop_ids, fused.token_skip)
    for image in scene_images:
        embeds, ids = _prompt_embeds(fused, image)
        rows = np.flatnonzero(ids == fused.tokenizer.image_token_id)
        a = loop.generate(embeds, NEW, rows)
        b = other.generate(embeds, NEW, rows)
        assert a.ids.tolist() == b.ids.tolist()
    # After one prefill (FastV, KV removal), one step: the same logits at the right position,
    # other logits at another one (the step graph does rotate at the given position).
    steps = {}
    for name, decoder in (('explicit', loop), ('step graph', other)):
        _, lengths = decoder._prefill(embeds, rows)
        steps[name] = []
        for where in (embeds.shape[1], embeds.shape[1] + 5):
            h = fused.embed_table[3:4][None]
            for runner, cached in zip(decoder.runners, lengths):
                h = runner.run(h, np.array([where]), cached)
            steps[name].append(h[0, -1].copy())
    same = np.abs(steps['step graph'][0] - steps['explicit'][0]).max()
    moved = np.abs(steps['step graph'][1] - steps['explicit'][0]).max()
    assert same < 1e-5 and moved > 20 * same + 1e-4    # (a random tiny model's logits are flat)


def test_random_fastv_and_kv_removal_without_a_split(tiny_model_dir, tmp_path, scene_images):
    """
    Check FastV K=0 and KV removal from block 0 need no split and decode as decoder.onnx.

    FastV K=0 keeps a seeded random subset before block 0; one explicit-position fused graph,
    compacted in place, decodes as decoder.onnx does.
    """
    from ros2_gmskip.exporters.onnx_export import export_bundle
    out = tmp_path / 'k0'
    export_bundle(tiny_model_dir, out, tokens=TokenSkip(FastVConfig(k=0, r=0.5), kv_ratio=0.5),
                  validate_n=2, max_new_tokens=NEW, threads=1)
    [segment] = load_bundle(out).manifest.segments
    assert (segment.first, segment.stop, segment.ranks) == (0, 4, False)
    fused, portable = _backend(out), _backend(out, graph='portable')
    assert fused.info.decoder_graph == 'fused'
    for image in scene_images:
        a = fused.describe(image, DEFAULT_PROMPT, NEW)
        b = portable.describe(image, DEFAULT_PROMPT, NEW)
        assert (a.text, a.tokens) == (b.text, b.tokens)
