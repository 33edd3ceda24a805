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
Token skipping in exported bundles.

Split decoder graphs, the numpy decode loop (FastV ranking, visual KV removal) against the torch
reference, settings round trips, and clear refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ros2_gmskip.tokenskip.settings import (
    FastVConfig,
    parse_fastv,
    random_slots,
    retained_slots,
    TokenSkip,
)

NEW = 12


def _export(model_dir: Path, out: Path, tokens: TokenSkip, **kw):
    from ros2_gmskip.exporters.onnx_export import export_bundle
    result = export_bundle(model_dir, out, tokens=tokens, validate_n=3, max_new_tokens=NEW,
                           threads=1, **kw)
    return result.manifest


@pytest.fixture(scope='module')
def fastv_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    """
    Export the tiny model with FastV K=2 R=0.5 + all visual KV removed.

    Export validation must pass (the runtime's greedy text == the torch reference on 3 scenes).
    """
    out = tmp_path_factory.mktemp('tokens') / 'fastv'
    _export(tiny_model_dir, out, TokenSkip(FastVConfig(k=2, r=0.5), kv_ratio=1.0))
    return out


# --------------------------------------------------------------------------------------------------
# settings (pure)

def test_settings_round_trip_and_off():
    ts = TokenSkip(FastVConfig(k=2, r=0.5), kv_ratio=1.0, kv_start=1)
    d = ts.to_dict()
    assert d == {'fastv': {'k': 2, 'r': 0.5, 'seed': 0},
                 'kv_removal': {'ratio': 1.0, 'start_layer': 1}}
    assert TokenSkip.from_dict({**d, 'search': {'anything': 1}}) == ts
    assert TokenSkip().to_dict() is None and TokenSkip.from_dict(None).is_off
    assert TokenSkip(FastVConfig(k=1, r=0.0)).is_off
    assert ts.describe() == 'FastV K=2 R=0.5, KV removal 100% from layer 1'
    assert ts.splits(4) == ((1, 2), 2)
    assert TokenSkip(FastVConfig(k=0, r=0.5)).splits(4) == ((), None)   # K=0: before layer 0
    assert TokenSkip(FastVConfig(k=4, r=0.5)).splits(4) == ((), None)   # K past the end: off


@pytest.mark.parametrize('bad, words', [
    ({'fastv': {'k': -1, 'r': 0.5}}, 'K must be'),
    ({'fastv': {'k': 1, 'r': 1.5}}, 'R must be'),
    ({'fastv': {'k': 1}}, 'tokens: fastv must be'),
    ({'kv_removal': {'ratio': 2}}, 'ratio must be'),
    ({'kv_removal': 'all'}, 'tokens: kv_removal must be'),
    ([1, 2], 'object or null'),
])
def test_malformed_settings_name_the_field(bad, words):
    with pytest.raises(ValueError, match=words):
        TokenSkip.from_dict(bad)


def test_parse_fastv():
    assert parse_fastv('2, 0.5') == FastVConfig(2, 0.5)
    for bad in ('2', '2,x', 'a,0.5', '2,0.5,1'):
        with pytest.raises(ValueError, match='K,R'):
            parse_fastv(bad)


def test_slot_rules():
    assert retained_slots(64, 0.75) == list(range(0, 64, 4))
    assert retained_slots(16, 0.0) == list(range(16))
    assert retained_slots(16, 1.0) == []
    a = random_slots(16, 8, seed=3)
    assert a == sorted(a) and len(set(a)) == 8 and a == random_slots(16, 8, seed=3)
    assert a != random_slots(16, 8, seed=4)


def test_rank_and_keep_rows():
    from ros2_gmskip.runtime.token_skip import keep_rows, rank_image_rows
    image = np.array([2, 3, 4, 5])
    scores = np.array([9.0, 9.0, 0.1, 0.5, 0.5, 0.2, 9.0])
    kept = rank_image_rows(scores, image, 2)          # 0.5 at rows 3 and 4 tie: both kept
    assert kept.tolist() == [3, 4]
    assert rank_image_rows(scores, image, 1).tolist() == [3]   # tie -> the earlier row
    assert keep_rows(7, image, kept).tolist() == [0, 1, 3, 4, 6]


# --------------------------------------------------------------------------------------------------
# export + runtime

def test_fastv_bundle_is_split_and_recorded(fastv_bundle):
    from ros2_gmskip.bundle_format import load_bundle
    manifest = json.loads((fastv_bundle / 'manifest.json').read_text())
    assert manifest['token_skip'] == {'fastv': {'k': 2, 'r': 0.5, 'seed': 0},
                                      'kv_removal': {'ratio': 1.0, 'start_layer': 0}}
    segs = manifest['segments']
    assert [(s['first'], s['stop']) for s in segs] == [(0, 2), (2, 4)]
    assert [s['portable'] for s in segs] == ['decoder.onnx', 'decoder.1.onnx']
    assert segs[0]['ranks'] and not segs[0]['last'] and segs[1]['last']
    assert set(manifest['graphs']) == {'vision', 'decoder', 'decoder.1'}
    assert manifest['validation']['passed']
    assert any('torch reference with FastV K=2 R=0.5' in c for c in
               manifest['validation']['checks'])
    m = load_bundle(fastv_bundle).manifest
    assert [s.output_name for s in m.segments] == ['hidden_states', 'logits']
    assert [s.input_name for s in m.segments] == ['inputs_embeds', 'inputs_hidden']


@pytest.mark.parametrize('graph', ['fused', 'portable'])
def test_runtime_prunes_the_expected_number_of_tokens(fastv_bundle, scene_images, graph):
    """
    Check the runtime prunes the expected number of tokens, counted in what the sessions see.

    The second segment's prefill runs on T - (n - ceil(n/2)) rows and decode attends to no
    visual key at all (KV ratio 1): count the rows and cache lengths the sessions see, on the
    fused segments (decode steps through their prepared bindings) and on decoder.onnx's.
    """
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    # one token per decode run (speculative runs: test_fused_token_decode.py)
    backend = OrtBackend(fastv_bundle, threads=1, graph=graph, draft_tokens=0)
    assert backend.info.decoder_graph == graph
    seen = []                       # (segment's first block, new rows, cache rows after the run)
    for runner in backend.decoder_loop.runners:
        def prefill(rows, positions, runner=runner, original=runner.prefill):
            seen.append((runner.segment.first, rows.shape[1], rows.shape[1]))
            return original(rows, positions)

        def run(rows, positions, cached, runner=runner, original=runner.run):
            seen.append((runner.segment.first, rows.shape[1], cached + rows.shape[1]))
            return original(rows, positions, cached)
        runner.prefill, runner.run = prefill, run
    ids = backend.tokenizer.prompt_ids('describe the scene.')
    n_img = int((ids == backend.tokenizer.image_token_id).sum())
    T = len(ids)
    backend.describe(scene_images[0], max_new_tokens=3)
    kept = T - (n_img - -(-n_img // 2))
    assert seen[0] == (0, T, T) and seen[1] == (2, kept, kept)
    steps = seen[2:]
    assert steps and all(rows == 1 for _, rows, _ in steps)
    assert steps[0][2] == T - n_img + 1 and steps[1][2] == kept - -(-n_img // 2) + 1


def test_r0_override_equals_the_plain_bundle(fastv_bundle, tiny_bundle, scene_images):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    plain = OrtBackend(tiny_bundle, threads=1)
    split_off = OrtBackend(fastv_bundle, threads=1, token_skip=TokenSkip(FastVConfig(2, 0.0)))
    for image in scene_images[:3]:
        a, b = plain.describe(image, max_new_tokens=NEW), split_off.describe(image,
                                                                             max_new_tokens=NEW)
        assert a.text == b.text and a.tokens == b.tokens


def test_override_needs_the_exported_split(fastv_bundle, tiny_bundle):
    from ros2_gmskip.errors import BundleError
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    with pytest.raises(BundleError, match='no decoder split at FastV K=1'):
        OrtBackend(fastv_bundle, threads=1, token_skip=TokenSkip(FastVConfig(1, 0.5)))
    with pytest.raises(BundleError, match='export it with --fastv 2,0.5'):
        OrtBackend(tiny_bundle, threads=1, token_skip=TokenSkip(FastVConfig(2, 0.5)))
    # KV removal alone needs no split: any bundle can run it
    OrtBackend(tiny_bundle, threads=1, token_skip=TokenSkip(kv_ratio=1.0))


@pytest.mark.parametrize('tokens, segments', [
    (TokenSkip(kv_ratio=0.5), 1),                       # KV removal only: no split
    (TokenSkip(FastVConfig(k=0, r=0.5, seed=1)), 1),    # K = 0: a random subset up front
    (TokenSkip(FastVConfig(k=1, r=0.75), kv_ratio=1.0, kv_start=3), 3),
])
def test_other_settings_export_and_match_torch(tiny_model_dir, tmp_path, tokens, segments):
    manifest = _export(tiny_model_dir, tmp_path / 'b', tokens)     # validation = torch parity
    assert manifest.validation['passed']
    assert len(manifest.segments) == segments
    assert manifest.token_skip == tokens


def test_plan_tokens_are_applied_unless_overridden(tiny_model_dir, tmp_path, make_plan):
    from ros2_gmskip.exporters.onnx_export import plan_token_skip
    plan = make_plan(tiny_model_dir, [3], tmp_path / 'plan.json')
    data = json.loads(plan.read_text())
    data['tokens'] = {'fastv': {'k': 1, 'r': 0.5}, 'kv_removal': None, 'search': {}}
    plan.write_text(json.dumps(data))
    assert plan_token_skip(plan) == TokenSkip(FastVConfig(1, 0.5))
    manifest = _export(tiny_model_dir, tmp_path / 'b', None, plan=plan)
    assert manifest.token_skip.fastv.k == 1
    assert [(s.first, s.stop) for s in manifest.segments] == [(0, 1), (1, 3)]
    off = _export(tiny_model_dir, tmp_path / 'c', TokenSkip(), plan=plan)
    assert off.token_skip.is_off and len(off.segments) == 1


def test_fastv_k_beyond_the_pruned_decoder_is_refused(tiny_model_dir, tmp_path):
    from ros2_gmskip.errors import BundleError
    with pytest.raises(BundleError, match='FastV K=3 needs more than the 3 decoder blocks'):
        _export(tiny_model_dir, tmp_path / 'b', TokenSkip(FastVConfig(3, 0.5)),
                removed_blocks=[0])
    assert not (tmp_path / 'b').exists()


def test_segments_that_do_not_tile_the_decoder_are_refused(fastv_bundle, tmp_path):
    import shutil

    from ros2_gmskip.bundle_format import load_bundle
    from ros2_gmskip.errors import BundleError
    copy = tmp_path / 'b'
    shutil.copytree(fastv_bundle, copy)
    manifest = json.loads((copy / 'manifest.json').read_text())
    manifest['segments'][1]['first'] = 3
    (copy / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r'segment 1 \[3, 4\] does not follow the one before'):
        load_bundle(copy)
    manifest['segments'][1]['first'] = 2
    manifest['segments'][1]['stop'] = 3
    (copy / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match='segments end at block 3, the decoder has 4'):
        load_bundle(copy)


def test_export_cli_flags(tiny_model_dir, tmp_path, capsys):
    from ros2_gmskip.cli import main
    out = tmp_path / 'b'
    code = main(['export', '--model', str(tiny_model_dir), '--out', str(out), '--fastv', '1,0.5',
                 '--validate-n', '1', '--max-new-tokens', '4', '--threads', '1'])
    assert code == 0
    text = capsys.readouterr().out
    assert 'decoder.1.onnx' in text and 'token skipping: FastV K=1 R=0.5' in text
    with pytest.raises(SystemExit):
        main(['export', '--out', str(tmp_path / 'c'), '--fastv', '2'])
    assert 'expected K,R' in capsys.readouterr().err


def test_replay_applies_the_bundle_token_skipping(fastv_bundle, tiny_bundle, tmp_path):
    """
    Check the node's pipeline (replay) applies a token-skipping bundle's settings.

    Texts equal the torch reference path's settings (the bundle validated that), the summary and
    diagnostics name the settings.
    """
    from ros2_gmskip.ros.bag import make_bag
    from ros2_gmskip.ros.replay import read_output_bag, replay_bag
    from ros2_gmskip.runtime.factory import create_backend
    bag = tmp_path / 'in'
    make_bag(bag, n=3, fps=10, progress=False, width=160, height=120)
    summary = replay_bag(bag, tmp_path / 'out', create_backend('onnxruntime', bundle=fastv_bundle,
                                                               threads=1), progress=False)
    assert summary['described'] == 3
    assert summary['token_skip']['fastv'] == {'k': 2, 'r': 0.5, 'seed': 0}
    values = [kv for topic, _, msg in read_output_bag(tmp_path / 'out') if topic == '/diagnostics'
              for status in msg.status for kv in status.values if kv.key == 'token_skip']
    assert values and values[-1].value == 'FastV K=2 R=0.5, KV removal 100%'
    plain = replay_bag(bag, tmp_path / 'out2', create_backend('onnxruntime', bundle=tiny_bundle,
                                                              threads=1), progress=False)
    assert plain['token_skip'] is None
