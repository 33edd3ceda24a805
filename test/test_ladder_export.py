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

"""One bundle, every rung: export --ladder's layout, validation, rung switches, one weight copy."""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path

import numpy as np
import pytest
from ros2_gmskip.bundle_format import FORMAT, load_bundle, WEIGHTS_FILE
from ros2_gmskip.errors import BundleError
from ros2_gmskip.exporters.ladder_export import ladder_layout
from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip

FASTV = TokenSkip(FastVConfig(k=1, r=0.5), kv_ratio=0.5, kv_start=1)
RUNGS = [[1, 3], [3], []]              # the tiny model (4 blocks): a middle block skipped too
NEW = 10
SHIPPED = Path(__file__).resolve().parents[1] / 'models' / 'gmskip-llava-scenes' / 'plans'


def test_layout_of_the_shipped_ladder():
    """The deepest rung is exported; every rung's own blocks are numbered in it."""
    data = json.loads((SHIPPED / 'accuracy-reverse.ladder.json').read_text())
    rungs = [r['removed_blocks'] for r in data['rungs']]
    layout = ladder_layout(rungs, 16, TokenSkip.from_dict(data['tokens']))
    assert layout.base == (12, 13, 14, 15) and layout.kept == tuple(range(12))
    assert layout.bundle_blocks(rungs[2]) == [5, 8, 9, 10, 11]         # the plan's, beyond 12-15
    assert layout.bundle_blocks(rungs[-1]) == []


def test_layout_refuses_a_rung_too_short_for_the_token_settings():
    assert ladder_layout(RUNGS, 4, FASTV).kept == (0, 1, 2, 3)
    assert ladder_layout([[0, 2, 3], [2, 3]], 4).kept == (0, 1)
    with pytest.raises(BundleError, match=r'^rung 0 keeps 1 decoder blocks: FastV K=1 needs '
                                          'more; choose a smaller K'):
        ladder_layout([[1, 2, 3], []], 4, TokenSkip(FastVConfig(k=1, r=0.5)))
    with pytest.raises(BundleError, match=r'^rung 0 keeps 1 decoder blocks: KV removal from '
                                          'layer 1 is past its last one$'):
        ladder_layout([[1, 2, 3], []], 4, TokenSkip(kv_ratio=0.5, kv_start=1))


@pytest.fixture(scope='module')
def ladder_bundle(tiny_model_dir, tiny_ladder, tmp_path_factory) -> Path:
    """Export the tiny model's ladder [1, 3] > [3] > [] (plan [3]) with FastV + KV removal."""
    from ros2_gmskip.exporters.onnx_export import export_bundle
    from ros2_gmskip.gmskip.ladder import save_ladder
    _, ladder = tiny_ladder
    rungs = [replace(ladder.rungs[0], removed_blocks=tuple(r)) for r in RUNGS]
    ours = replace(ladder, rungs=rungs, plan_removed=(3,), tokens=FASTV.to_dict())
    folder = tmp_path_factory.mktemp('ladder_bundle')
    path = save_ladder(ours, folder / 'plan.ladder.json')
    export_bundle(tiny_model_dir, folder / 'bundle', ladder=path, validate_n=3,
                  max_new_tokens=NEW, threads=1)
    return folder / 'bundle'


def test_ladder_bundle_manifest_and_validation(ladder_bundle):
    """Each rung has its own graphs, split as its plan bundle would be (FastV K=1 of its own)."""
    m = load_bundle(ladder_bundle).manifest
    assert FORMAT.endswith('@5') and m.decoder.num_layers == 3 and m.blocks_removed == [3]
    assert [(s.first, s.stop, s.last, s.ranks) for s in m.segments] == [
        (0, 1, False, True), (1, 2, True, False),              # rung 0: blocks 0, 2
        (0, 1, False, True), (1, 3, True, False),              # rung 1 (the plan): 0, 1, 2
        (0, 1, False, True), (1, 4, True, False)]              # rung 2: all four
    assert [r.segments for r in m.ladder.rungs] == [(0, 1), (2, 3), (4, 5)]
    assert [s.portable for s in m.segments[2:4]] == ['decoder.rung1.onnx', 'decoder.rung1.1.onnx']
    assert m.segments[5].fused == 'decoder.rung2.fused.1.onnx'
    assert m.ladder.plan_rung == 1 and m.ladder.weights == WEIGHTS_FILE
    for rung in m.ladder.rungs:        # each rung's text == the torch model pruned to it
        assert rung.validation == {'identical_text': '3/3', 'fused_identical_text': '3/3'}
    assert m.validation['passed'] and m.validation['identical_text'] == '3/3'
    checks = m.validation['checks']
    assert sum('greedy text' in c for c in checks) == 6 and all(c[0] == '✓' for c in checks)
    assert sum('TensorRT ops' in c for c in checks) == 1 + 6     # vision + every rung's graphs


def test_each_rung_runs_as_its_pruned_torch_model_and_switches_per_request(
        ladder_bundle, tiny_model_dir, scene_images):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.vlm.blocks import remove_blocks
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    backend = OrtBackend(ladder_bundle, threads=1)
    assert backend.graph == 'fused' and len(backend.ladder.rungs) == 3
    image = scene_images[1]
    texts = []
    for rung, removed in enumerate(RUNGS):
        reference = TorchBackend(tiny_model_dir, tokens=FASTV, threads=1)
        remove_blocks(reference.model, removed)
        want = reference.describe(image, max_new_tokens=NEW).text
        texts.append(backend.describe(image, max_new_tokens=NEW, rung=rung).text)
        assert texts[-1] == want, rung
    assert len(set(texts)) > 1                        # the rungs are different models
    # switch back and forth between requests: each rung's own text, whatever ran before
    for rung in (0, 2, 0, 1, 2):
        assert backend.describe(image, max_new_tokens=NEW, rung=rung).text == texts[rung]
    assert backend.describe(image, max_new_tokens=NEW).text == texts[1]     # the plan's rung
    portable = OrtBackend(ladder_bundle, threads=1, graph='portable')
    assert [portable.describe(image, max_new_tokens=NEW, rung=r).text for r in (2, 0)] == \
        [texts[2], texts[0]]


def test_one_copy_of_the_weights(ladder_bundle):
    """weights.bin holds each weight once, every rung graph points into it, sessions map it."""
    import onnx
    from ros2_gmskip.exporters.shared_weights import ALIGN, MIN_BYTES
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    m = load_bundle(ladder_bundle).manifest
    places: dict[str, tuple[int, int]] = {}

    def shared(names: list[str]) -> set[str]:
        keys = set()
        for name in names:
            graph = onnx.load(str(ladder_bundle / name), load_external_data=False).graph
            for t in graph.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    where = {e.key: e.value for e in t.external_data}
                    assert where['location'] == WEIGHTS_FILE
                    place = (int(where['offset']), int(where['length']))
                    assert places.setdefault(t.name, place) == place    # one place per name
                    keys.add(t.name)
                else:                                  # only small constants stay inline
                    assert len(t.raw_data) < MIN_BYTES, (name, t.name)
        return keys

    rungs = [[m.segments[i] for i in r.segments] for r in m.ladder.rungs]
    deepest = {kind: shared([getattr(s, kind) for s in rungs[-1]])
               for kind in ('portable', 'fused')}
    for rung in rungs[:-1]:            # a shallower rung's weights are all the deepest one's
        for kind, keys in deepest.items():
            assert shared([getattr(s, kind) for s in rung]) <= keys
    assert set(places) == deepest['portable'] | deepest['fused']
    spans = sorted(places.values())
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))     # no overlaps
    held = sum(n for _, n in spans)
    size = (ladder_bundle / WEIGHTS_FILE).stat().st_size
    assert held <= size < held + ALIGN * len(spans)          # nothing else but page padding
    maps = Path('/proc/self/maps')
    if maps.is_file():                 # ONNX Runtime maps the file: one copy, in the page cache
        backend = OrtBackend(ladder_bundle, threads=1)
        assert backend.ladder is not None
        assert str(ladder_bundle / WEIGHTS_FILE) in maps.read_text()


def test_a_truncated_weights_file_is_one_line(ladder_bundle, tmp_path):
    import shutil
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    cut = tmp_path / 'cut'
    shutil.copytree(ladder_bundle, cut)
    data = (cut / WEIGHTS_FILE).read_bytes()
    (cut / WEIGHTS_FILE).write_bytes(data[:len(data) // 2])
    with pytest.raises(BundleError, match=f'{WEIGHTS_FILE} sha256 mismatch'):
        OrtBackend(cut, threads=1)
    with pytest.raises(BundleError, match=r'onnxruntime cannot load decoder\.rung\d[.\w]*\.onnx '
                                          r'\(Fail: .*External initializer: w\.[0-9a-f]+ '
                                          r'offset: \d+ ?\): re-export it with ros2-gmskip'):
        OrtBackend(cut, threads=1, verify=False)


def test_bad_rung_and_old_bundles_are_one_line(ladder_bundle, tiny_bundle, tmp_path):
    import shutil
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    backend = OrtBackend(ladder_bundle, threads=1)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r'^rung 3 is not in the ladder \(0\.\.2\)$'):
        backend.describe(image, rung=3)
    with pytest.raises(ValueError, match='has no plan ladder .export it with --ladder.$'):
        OrtBackend(tiny_bundle, threads=1).describe(image, rung=0)
    old = tmp_path / 'old'
    shutil.copytree(ladder_bundle, old)
    data = json.loads((old / 'manifest.json').read_text())
    data['format'] = 'ros2_gmskip/onnx-bundle@2'
    (old / 'manifest.json').write_text(json.dumps(data))
    with pytest.raises(BundleError, match='has format 2, this version reads 5: re-run '):
        OrtBackend(old, threads=1)


def test_node_and_replay_drive_the_ort_ladder_bundle(ladder_bundle, tmp_path, capsys):
    """The node's backend factory and replay run the ladder bundle through the rung chooser."""
    from fakes import image_msg, stand_in_convert
    from ros2_gmskip import cli
    from ros2_gmskip.ros.bag import make_bag
    from ros2_gmskip.ros.node import create_backend
    from ros2_gmskip.ros.params import DescriberParams
    from ros2_gmskip.ros.pipeline import DescriberCore
    params = replace(DescriberParams(), backend='onnxruntime', bundle_path=str(ladder_bundle),
                     latency_budget_ms=100000.0, max_new_tokens=4)
    backend = create_backend(params)
    outputs = []
    core = DescriberCore(backend, params, publish=outputs.append, convert=stand_in_convert)
    for _ in range(20):
        core.process(image_msg(), False)
    # a priming frame per rung, 5 rounds over them, deepest first; then the deepest (all fit)
    assert [o.rung['index'] for o in outputs] == [2, 1, 0] * 6 + [2] * 2
    assert outputs[0].rung == {'index': 2, 'blocks_removed': [], 'val_score':
                               backend.ladder.rungs[2].score}
    values = core.rung_values()
    assert values['rung_mode'] == 'auto' and values['rung'] == 2 and values['rungs'] == 3
    fixed = DescriberCore(backend, replace(params, latency_budget_ms=0.0), publish=outputs.append,
                          convert=stand_in_convert)
    fixed.process(image_msg(), False)
    assert outputs[-1].rung['index'] == 1                          # budget 0: the plan's rung

    bag = tmp_path / 'bag'
    make_bag(bag, n=20, fps=30.0, progress=False, width=64, height=48)
    code = cli.main(['replay', str(bag), '--out', str(tmp_path / 'out'), '--backend',
                     'onnxruntime', '--bundle', str(ladder_bundle), '--rung', '0',
                     '--max-new-tokens', '4', '--json', '--no-progress'])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['rung_frames'] == {'0': 20} and summary['engine_id']
