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
The node side of plan ladders: parameters, the pipeline choosing rungs, replay, the torch backend.

The pipeline tests use a ladder backend on a fake clock: a frame on rung r "takes" COSTS[r] x
the current load, so the chooser's decisions are deterministic. The torch-backend test runs the
tiny model's real rungs.
"""

from __future__ import annotations

from dataclasses import replace
import json

from fakes import image_msg, stand_in_convert
import numpy as np
import pytest
from ros2_gmskip.ros.params import DescriberParams, load_params, ParameterError
from ros2_gmskip.ros.pipeline import DescriberCore
from ros2_gmskip.runtime.ladder import Ladder, LadderError
from ros2_gmskip.runtime.results import BackendInfo, Latency, Result

COSTS = [40.0, 50.0, 60.0, 70.0]     # ms per rung, rung 0 fastest
LADDER = Ladder.from_rungs([[4, 5, 6, 7], [5, 6, 7], [6, 7], [7]], 8, plan_removed=[5, 6, 7],
                           scores=[0.80, 0.86, 0.90, 0.91])


class Clock:
    """Fake monotonic clock in seconds, advanced by the backend."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class LadderBackend:
    """A backend with a plan ladder: `describe(..., rung=r)` advances the clock by COSTS[r]."""

    name = 'fake-ladder'

    def __init__(self, clock: Clock, ladder: Ladder = LADDER) -> None:
        self.clock, self.ladder = clock, ladder
        self.load = 1.0
        self.rungs: list[int | None] = []
        self.info = BackendInfo(backend='fake-ladder', model_id='fake', plan_id='fake-plan',
                                engine_id='', blocks_removed=(5, 6, 7))

    def describe(self, image, prompt, max_new_tokens=48, rung=None) -> Result:
        self.rungs.append(rung)
        ms = COSTS[rung] * self.load
        self.clock.t += ms / 1e3
        return Result(text=f'rung {rung}', tokens=2,
                      latency=Latency(total_ms=ms, decode_tokens=1))


def make_core(budget=0.0, rung='auto', backend=None):
    clock = Clock()
    backend = backend or LadderBackend(clock)
    outputs = []
    params = replace(DescriberParams(), latency_budget_ms=budget, rung=rung)
    core = DescriberCore(backend, params, publish=outputs.append, clock=clock,
                         wall_clock=clock, convert=stand_in_convert)
    return core, backend, outputs


def run(core, frames):
    for _ in range(frames):
        core.process(image_msg(), False)


def test_parameters_have_defaults_and_are_checked():
    params = load_params()
    assert params.latency_budget_ms == 0.0 and params.rung == 'auto'
    assert load_params(overrides={'rung': 2}).rung == '2'            # -p rung:=2 (YAML int)
    assert load_params(overrides={'latency_budget_ms': 120}).latency_budget_ms == 120.0
    for bad in ({'rung': 'fast'}, {'rung': -1}, {'latency_budget_ms': -5.0}):
        with pytest.raises(ParameterError, match=repr(next(iter(bad)))):
            load_params(overrides=bad)


def test_budget_zero_runs_the_plan_rung_fixed():
    core, backend, outputs = make_core(budget=0.0)
    run(core, 5)
    assert backend.rungs == [1] * 5                                   # the plan's rung
    scene = outputs[-1].scene_dict()
    assert scene['rung'] == {'index': 1, 'blocks_removed': [5, 6, 7], 'val_score': 0.86}
    values = core.diagnostics()['values']
    assert values['rung_mode'] == 'fixed' and values['rung'] == 1
    assert values['latency_budget_ms'] == 0.0 and values['rung_switches'] == 0


def test_a_fixed_rung_number_wins():
    core, backend, _ = make_core(budget=45.0, rung='3')
    run(core, 4)
    assert backend.rungs == [3] * 4


def test_auto_fits_the_budget_and_goes_down_under_load():
    core, backend, outputs = make_core(budget=65.0)
    warmup = 6 * len(COSTS)              # a priming frame per rung, then 5 rounds over them
    run(core, warmup + 20)
    assert backend.rungs[:warmup] == [3, 2, 1, 0] * 6
    assert backend.rungs[warmup:] == [2] * 20                          # 60 ms fits 65
    d = core.diagnostics()
    assert 'budget' not in d['message']       # (frames go to process(): no input rate here)
    values = d['values']
    assert values['rung_mode'] == 'auto' and values['rung'] == 2 and values['rungs'] == 4
    assert values['rung_blocks_removed'] == [6, 7] and values['rung_val_score'] == 0.90
    assert values['latency_budget_ms'] == 65.0
    assert values['rung_p90_ms'] == pytest.approx(60.0)
    backend.load = 1.25                                                # 60 -> 75 ms
    run(core, 30)
    assert backend.rungs[-1] == 1 and core.diagnostics()['values']['rung_switches'] >= 2
    assert json.loads(json.dumps(outputs[-1].scene_dict()))['rung']['index'] == 1
    assert all(o.processing_time_ms <= 65.0 for o in outputs[-20:])


def test_over_budget_on_the_fastest_rung_warns():
    core, backend, _ = make_core(budget=30.0)
    run(core, 40)
    d = core.diagnostics()
    assert backend.rungs[-1] == 0
    assert d['level'] == 'WARN' and 'over the latency budget 30 ms on the fastest rung' in \
        d['message']


def test_without_a_ladder_the_keys_are_empty_and_a_budget_is_refused():
    from fakes import FakeBackend
    core = DescriberCore(FakeBackend(delay_ms=0), DescriberParams(), publish=lambda out: None,
                         convert=stand_in_convert)
    values = core.diagnostics()['values']
    assert values['rung'] == '' and values['rung_mode'] == 'off'
    core.process(image_msg(), False)
    assert core.last_output.scene_dict()['rung'] is None
    with pytest.raises(LadderError, match='latency_budget_ms 80 needs a backend that runs a '
                                          'plan ladder'):
        DescriberCore(FakeBackend(), replace(DescriberParams(), latency_budget_ms=80.0),
                      publish=lambda out: None)
    with pytest.raises(LadderError, match="rung '7' is not in this ladder: use auto or a "
                                          'number 0..3'):
        make_core(rung='7')


def test_budget_changes_while_running():
    core, backend, _ = make_core(budget=0.0)
    run(core, 3)
    assert core.chooser is None and backend.rungs == [1, 1, 1]
    core.set_latency_budget(65.0)                                      # off -> auto
    run(core, 6 * len(COSTS) + 5)
    assert backend.rungs[-1] == 2
    core.set_latency_budget(45.0)                                      # tighter: 40 ms fits
    run(core, 10)
    assert backend.rungs[-1] == 0 and core.diagnostics()['values']['latency_budget_ms'] == 45.0
    core.set_latency_budget(0.0)                                       # off: the plan again
    run(core, 2)
    assert backend.rungs[-2:] == [1, 1]
    from fakes import FakeBackend
    plain = DescriberCore(FakeBackend(), DescriberParams(), publish=lambda out: None)
    with pytest.raises(LadderError, match='needs a backend that runs a plan ladder'):
        plain.set_latency_budget(50.0)


def test_node_parameters_and_live_budget_over_the_dds_transport(monkeypatch):
    import os
    from fakes import LOOPBACK_URI
    monkeypatch.setenv('CYCLONEDDS_URI', LOOPBACK_URI)
    from ros2_gmskip.ros.dds_transport import DdsTransport
    from ros2_gmskip.ros.node import GmSkipDescriber
    argv = ['prog', '--ros-args', '-p', 'latency_budget_ms:=65', '-p', 'rung:=auto']
    transport = DdsTransport('gmskip_describer', argv, domain_id=100 + os.getpid() % 100)
    backend = LadderBackend(Clock())
    node = GmSkipDescriber(transport, backend_factory=lambda params, **_: backend)
    try:
        assert node.params.latency_budget_ms == 65.0 and node.core.chooser is not None
        assert node.parameters_callback({'latency_budget_ms': 45.0}) == (True, '')
        assert node.core.chooser.budget_ms == 45.0
        ok, reason = node.parameters_callback({'rung': '1'})
        assert not ok and 'restart' in reason
        node.diagnostics_callback()
    finally:
        node.destroy_node()


def test_node_backend_refuses_a_budget_without_a_plan_or_a_ladder(tmp_path):
    from ros2_gmskip.ros.node import create_backend
    params = replace(DescriberParams(), model_path=str(tmp_path), latency_budget_ms=50.0,
                     backend='torch')
    with pytest.raises(LadderError, match='needs a skip plan with a ladder: set plan_path'):
        create_backend(params)
    with pytest.raises(LadderError, match='needs a skip plan with a ladder: set plan_path'):
        create_backend(replace(params, backend='onnxruntime'))     # before any export
    from ros2_gmskip.runtime.factory import create_backend as factory
    with pytest.raises(LadderError, match=r"^no plan ladder '.*p.ladder.json': make one with "):
        factory('onnxruntime', model=tmp_path, plan=tmp_path / 'p.json',
                ladder=tmp_path / 'p.ladder.json')


# ----------------------------------------------------------------------------------------------
# the torch backend runs every rung from one copy of the weights


def test_torch_backend_runs_each_rung_as_the_pruned_model(tiny_model_dir, tiny_ladder,
                                                          scene_images):
    from ros2_gmskip.runtime.factory import create_backend
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    plan_path, ladder = tiny_ladder
    assert [list(r.removed_blocks) for r in ladder.rungs] == [[1, 2, 3], [2, 3], [3], []]
    backend = create_backend('torch', model=tiny_model_dir, plan=plan_path,
                             ladder=plan_path.with_name('plan.ladder.json'), threads=1)
    assert backend.ladder.plan_rung == 0 and list(backend.info.blocks_removed) == [1, 2, 3]
    layers = backend.model.model.language_model.layers
    assert len(layers) == 4                                   # whole: one copy of the weights
    image = scene_images[0]
    for rung in ladder.runtime().rungs:
        got = backend.describe(image, max_new_tokens=6, rung=rung.index).text
        reference = TorchBackend(tiny_model_dir, threads=1)
        from ros2_gmskip.vlm.blocks import remove_blocks
        remove_blocks(reference.model, list(rung.removed_blocks))
        assert got == reference.describe(image, max_new_tokens=6).text, rung
    assert len(backend.model.model.language_model.layers) == 4          # restored after calls
    assert backend.describe(image, max_new_tokens=6).text == \
        backend.describe(image, max_new_tokens=6, rung=0).text          # default: the plan
    with pytest.raises(ValueError, match='not in the ladder'):
        backend.describe(image, rung=9)
    plain = TorchBackend(tiny_model_dir, threads=1)
    with pytest.raises(ValueError, match='no plan ladder'):
        plain.describe(np.zeros((8, 8, 3), np.uint8), rung=0)


def test_torch_backend_refuses_a_ladder_of_another_plan(tiny_model_dir, tiny_ladder, tmp_path,
                                                        make_plan):
    from ros2_gmskip.errors import PlanError
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    plan_path, _ = tiny_ladder
    other = make_plan(tiny_model_dir, [3], tmp_path / 'other.json')
    with pytest.raises(PlanError, match='was made for plan id .*ros2-gmskip ladder --plan'):
        TorchBackend(tiny_model_dir, plan=other, ladder=plan_path.with_name('plan.ladder.json'))


def test_replay_with_a_budget_on_the_tiny_model(tiny_model_dir, tiny_ladder, tmp_path, capsys):
    from ros2_gmskip import cli
    from ros2_gmskip.ros.bag import make_bag
    plan_path, _ = tiny_ladder
    bag = tmp_path / 'bag'
    make_bag(bag, n=30, fps=30.0, progress=False, width=64, height=48)
    out = tmp_path / 'out'
    code = cli.main(['replay', str(bag), '--out', str(out), '--backend', 'torch', '--model',
                     str(tiny_model_dir), '--plan', str(plan_path), '--latency-budget-ms',
                     '100000', '--max-new-tokens', '4', '--json', '--no-progress'])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['latency_budget_ms'] == 100000.0
    # a priming frame per rung and 5 rounds over them warm up; then the deepest rung (all fit)
    assert summary['rung_frames'] == {'0': 6, '1': 6, '2': 6, '3': 12}
    assert summary['rung_switches'] == 0
    code = cli.main(['replay', str(bag), '--out', str(tmp_path / 'out2'), '--backend', 'torch',
                     '--model', str(tiny_model_dir), '--latency-budget-ms', '50', '--json'])
    assert code == 1
    assert 'need a skip plan with a ladder: pass --plan' in capsys.readouterr().err
