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

"""Plan ladders: built from both strategies' trajectories, nested, validated, saved and loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ros2_gmskip.errors import PlanError
from ros2_gmskip.gmskip.ladder import (
    build_ladder,
    format_ladder,
    LADDER_FORMAT,
    ladder_path,
    load_ladder,
    nested_chain,
    PlanLadder,
    save_ladder,
)
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.plan import plan_id, SkipPlan
from ros2_gmskip.gmskip.strategies import search, Step
from ros2_gmskip.gmskip.token_search import Workload
from ros2_gmskip.tokenskip.flops import DecoderDims
from safetensors.numpy import save_file

# block importances: removing block b costs IMPORTANCE[b] of the score (additive, as test_plan)
IMPORTANCE = [0.5, 0.3, 0.2, 0.01, 0.1, 0.02, 0.005, 0.03]
WORKLOAD = Workload(DecoderDims(layers=8, hidden=64, ffn=128), n_tokens=30, n_image=16,
                    new_tokens=10)


def additive(removed):
    return 1.0 - sum(IMPORTANCE[b] for b in removed)


class Counter:
    """A score function that counts its calls (what a ladder costs in evaluations)."""

    def __init__(self, fn=additive):
        self.fn, self.calls = fn, []

    def __call__(self, removed):
        self.calls.append(tuple(removed))
        return self.fn(removed)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / 'model'
    folder.mkdir()
    save_file({'w': np.zeros(2, np.float32)}, str(folder / 'model.safetensors'))
    (folder / 'config.json').write_text('{}')      # what load_plan's model-folder check reads
    return folder


def make_plan(model_dir, strategy='reverse', min_score_ratio=0.9, tokens=None, **kwargs):
    result = search(additive, len(IMPORTANCE), strategy=strategy,
                    objective=Objective(lam=0.3, min_score_ratio=min_score_ratio),
                    protect_first=2, progress=False, **kwargs)
    plan = SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy',
                                split='val', n=64, protect_first=2)
    plan.tokens = tokens
    return plan, result


def removed_sets(ladder):
    return [list(r.removed_blocks) for r in ladder.rungs]


def test_reverse_ladder_is_the_trajectory_plus_faster_rungs(model_dir):
    plan, result = make_plan(model_dir)
    # reverse tries 7, 6, 5, 4, 3, 2; J allows a drop of 0.3/8 = 0.0375 per block: 4 and 2 stay
    assert [list(s.removed) for s in result.trajectory] == [
        [], [7], [6, 7], [5, 6, 7], [3, 5, 6, 7]]
    assert plan.removed_blocks == [3, 5, 6, 7]
    score = Counter()
    known = {s.removed: s.score for s in result.evaluated}
    ladder, candidates = build_ladder(result.trajectory, plan, plan_id(plan), score, WORKLOAD,
                                      known=known, extra=3, floor=0.6)
    # faster than the plan: the least harmful of 2 and 4 first (4: 0.1), then 2 (0.2)
    assert removed_sets(ladder) == [[2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7], [3, 5, 6, 7],
                                    [5, 6, 7], [6, 7], [7], []]
    assert [r.origin for r in ladder.rungs] == ['extension'] * 2 + ['trajectory'] * 5
    assert ladder.plan_rung == 2
    # only the extension's new sets were scored: the search evaluated {2,3,5,6,7} already
    assert score.calls == [(3, 4, 5, 6, 7), (2, 3, 4, 5, 6, 7)]
    for a, b in zip(ladder.rungs, ladder.rungs[1:]):            # nested, fastest first
        assert set(b.removed_blocks) < set(a.removed_blocks)
        assert a.flops < b.flops
    assert ladder.rungs[-1].flops == ladder.full_flops and ladder.rungs[-1].flops_ratio == 1.0
    assert ladder.rungs[0].score == pytest.approx(additive([2, 3, 4, 5, 6, 7]))
    assert ladder.rungs[0].score_ratio == pytest.approx(ladder.rungs[0].score / 1.0)
    assert all(c.kept for c in candidates)
    table = format_ladder(candidates, plan.removed_blocks)
    assert '  2*' in table and 'extension' in table


def test_floor_stops_the_extension_and_drops_rungs(model_dir):
    plan, result = make_plan(model_dir)
    ladder, candidates = build_ladder(result.trajectory, plan, plan_id(plan), Counter(),
                                      WORKLOAD, extra=3, floor=0.8)
    # {3,4,5,6,7} scores 0.835 >= 0.8; adding 2 gives 0.635 < 0.8: the extension stops there
    assert removed_sets(ladder)[0] == [3, 4, 5, 6, 7]
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), Counter(), WORKLOAD,
                             extra=0, floor=0.99)
    # below the floor: dropped, except the plan (0.935)
    assert removed_sets(ladder) == [[3, 5, 6, 7], []]
    assert ladder.plan_rung == 0


def test_score_many_scores_each_step_together(model_dir):
    tokens = {'fastv': {'k': 1, 'r': 0.5, 'seed': 0}, 'kv_removal': None}
    plan, result = make_plan(model_dir, tokens=tokens)
    batches = []

    def score_many(sets):
        batches.append(list(sets))
        return [additive(s) for s in sets]
    single = Counter()
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), single, WORKLOAD, extra=2,
                             floor=0.6, score_many=score_many)
    # the extension's two candidates together, then the trajectory's five states together
    assert [sorted(b) for b in batches] == [[(2, 3, 5, 6, 7), (3, 4, 5, 6, 7)],
                                            sorted(tuple(s.removed) for s in result.trajectory)]
    assert single.calls == [(2, 3, 4, 5, 6, 7)]       # a step with one candidate: no batch
    assert removed_sets(ladder)[0] == [2, 3, 4, 5, 6, 7]


def test_a_slower_rung_that_scores_no_better_is_dropped(model_dir):
    plan, result = make_plan(model_dir)
    bumpy = {(): 0.90, (7,): 0.95, (6, 7): 0.93, (5, 6, 7): 0.94, (3, 5, 6, 7): 0.92}
    plan.metric.baseline = 0.90
    ladder, candidates = build_ladder(result.trajectory, plan, plan_id(plan),
                                      lambda r: bumpy[tuple(r)], WORKLOAD, extra=0, floor=None)
    # fastest first: plan 0.92 kept, [5,6,7] 0.94 kept, [6,7] 0.93 dropped, [7] 0.95 kept,
    # [] 0.90 dropped (the full model scores worse than [7] here)
    assert removed_sets(ladder) == [[3, 5, 6, 7], [5, 6, 7], [7]]
    dropped = [c for c in candidates if not c.kept]
    assert [list(c.rung.removed_blocks) for c in dropped] == [[6, 7], []]
    assert all(c.why == 'a faster rung scores as well' for c in dropped)


def test_greedy_trajectory_is_nested_and_walks_to_the_end(model_dir):
    plan, result = make_plan(model_dir, strategy='greedy')
    chain = nested_chain(result.trajectory)
    assert len(chain) == 1 + 6 and len(chain[-1]) == 6         # every non-protected block
    score = Counter()
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), score, WORKLOAD,
                             known={s.removed: s.score for s in result.evaluated}, floor=0.6)
    assert score.calls == []                  # nothing left to extend; every score known
    assert removed_sets(ladder)[-1] == []
    assert list(plan.removed_blocks) in removed_sets(ladder)


def test_token_skipping_rescores_every_rung(model_dir):
    tokens = {'fastv': {'k': 1, 'r': 0.5, 'seed': 0}, 'kv_removal': None}
    plan, result = make_plan(model_dir, tokens=tokens)
    score = Counter(lambda r: additive(r) - 0.01)
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), score, WORKLOAD,
                             known={s.removed: s.score for s in result.evaluated}, extra=0,
                             floor=None)
    assert sorted(score.calls) == sorted(tuple(s.removed) for s in result.trajectory)
    assert ladder.tokens == tokens
    assert ladder.rungs[-1].score == pytest.approx(0.99)
    assert ladder.rungs[-1].flops_ratio < 1.0                   # FastV saves FLOPs at full depth


def test_other_data_records_its_split_n_and_baseline(model_dir):
    plan, result = make_plan(model_dir)
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), additive, WORKLOAD,
                             extra=0, floor=None, data=('test', 32, 0.5))
    assert ladder.metric == {'name': 'accuracy', 'baseline': 0.5, 'split': 'test', 'n': 32}
    assert ladder.rungs[-1].score_ratio == pytest.approx(1.0 / 0.5)


def test_a_trajectory_that_is_not_nested_is_refused(model_dir):
    plan, result = make_plan(model_dir)
    steps = [Step(removed=(), score=1, score_ratio=1, objective=1, feasible=True),
             Step(removed=(7,), score=1, score_ratio=1, objective=1, feasible=True),
             Step(removed=(6,), score=1, score_ratio=1, objective=1, feasible=True)]
    with pytest.raises(PlanError, match='trajectory step 2 removes \\[6\\], not a superset'):
        build_ladder(steps, plan, plan_id(plan), additive, WORKLOAD)
    with pytest.raises(PlanError, match='no state of its trajectory'):
        build_ladder(result.trajectory[:2], plan, plan_id(plan), additive, WORKLOAD)


def test_round_trip_and_hash_check(model_dir, tmp_path):
    plan, result = make_plan(model_dir)
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), additive, WORKLOAD,
                             floor=0.6)
    path = save_ladder(ladder, ladder_path(tmp_path / 'plans' / 'p.json'))
    assert path == tmp_path / 'plans' / 'p.ladder.json'
    loaded = load_ladder(path, model_dir=model_dir)
    assert loaded.to_dict() == ladder.to_dict()
    assert json.loads(path.read_text())['format'] == LADDER_FORMAT
    assert loaded.runtime().plan_rung == ladder.plan_rung
    (model_dir / 'model.safetensors').write_bytes(b'other weights')
    with pytest.raises(PlanError, match='was made for model sha256 .*calibrate again'):
        load_ladder(path, model_dir=model_dir)
    assert load_ladder(path, model_dir=model_dir, check_hash=False).plan_id == plan_id(plan)


def test_ladder_path():
    assert ladder_path('plans/p.json').as_posix() == 'plans/p.ladder.json'
    assert ladder_path('plans/plan').as_posix() == 'plans/plan.ladder.json'


@pytest.fixture
def document(model_dir):
    plan, result = make_plan(model_dir)
    ladder, _ = build_ladder(result.trajectory, plan, plan_id(plan), additive, WORKLOAD,
                             floor=0.6)
    return ladder.to_dict()


@pytest.mark.parametrize('change, message', [
    (lambda d: d.update(format='ros2_gmskip/plan-ladder@0'), 'format .* is not'),
    (lambda d: d['rungs'].reverse(), 'rung 1 removes .*not a strict subset of rung 0'),
    (lambda d: d['rungs'][0]['removed_blocks'].append(8), 'removed block 8 out of range'),
    (lambda d: d['rungs'][1]['removed_blocks'].append(3), 'lists a block twice'),
    (lambda d: d['plan'].update(removed_blocks=[1]), 'the plan removes \\[1\\], which is no rung'),
    (lambda d: d['rungs'][0].update(score='high'), "rungs\\[0\\].score is 'high'"),
    (lambda d: d['rungs'][0].update(origin='guess'), "origin 'guess' is not one of"),
    (lambda d: d['rungs'][0].update(flops=-1), 'flops is -1'),
    (lambda d: d.pop('model'), "missing required key 'model'"),
    (lambda d: d.update(stack='ffn'), "stack 'ffn' is not one of"),
    (lambda d: d.update(tokens={'fastv': {'k': -1, 'r': 0.5}}), 'FastV K must be'),
])
def test_malformed_ladders_are_one_line_errors(document, tmp_path, change, message):
    change(document)
    path = tmp_path / 'bad.ladder.json'
    path.write_text(json.dumps(document))
    with pytest.raises(PlanError, match=message) as err:
        load_ladder(path)
    assert str(err.value).startswith(f'ladder {path}: ') and '\n' not in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(PlanError, match='no such ladder file .*ros2-gmskip ladder --plan'):
        load_ladder(tmp_path / 'none.ladder.json')
    bad = tmp_path / 'bad.ladder.json'
    bad.write_text('{"format": ')
    with pytest.raises(PlanError, match='is not valid JSON'):
        load_ladder(bad)


def test_from_dict_rejects_a_non_object():
    with pytest.raises(PlanError, match='expected a JSON object, got list'):
        PlanLadder.from_dict([])


# --- the ladder verb, with a fake evaluator ------------------------------------------------

class FakeEvaluator:
    """Stands in for CalibrationEvaluator: 8 blocks, additive importances, counts calls."""

    instances: list = []

    def __init__(self, model_dir, samples, metric, batch_size, trust_remote_code=False):
        self.samples, self.metric, self.evaluations, self.calls = samples, metric, 0, []
        FakeEvaluator.instances.append(self)

    def score(self, removed, tokens=None):
        self.evaluations += 1
        self.calls.append(tuple(removed))
        return additive(removed)

    def workload(self, removed=()):
        return WORKLOAD


@pytest.fixture
def fake_evaluator(monkeypatch):
    import sys
    import types

    import ros2_gmskip.scenes as scenes
    monkeypatch.setattr(scenes, 'load_samples', lambda data, n: [f'{data}{i}' for i in range(n)],
                        raising=False)
    module = types.ModuleType('ros2_gmskip.gmskip.evaluator')
    module.CalibrationEvaluator = FakeEvaluator
    monkeypatch.setitem(sys.modules, 'ros2_gmskip.gmskip.evaluator', module)
    FakeEvaluator.instances = []


def test_ladder_verb_reuses_the_plans_scores_on_its_data(fake_evaluator, model_dir, tmp_path,
                                                         capsys):
    from ros2_gmskip import cli
    from ros2_gmskip.gmskip.plan import save_plan
    plan, _ = make_plan(model_dir)
    path = save_plan(plan, tmp_path / 'p.json')
    assert cli.main(['ladder', '--model', str(model_dir), '--plan', str(path), '--extra', '1',
                     '--floor', '0.5']) == 0
    evaluator, = FakeEvaluator.instances
    assert len(evaluator.samples) == 64                      # the plan's split and n
    assert sorted(evaluator.calls) == [(2, 3, 5, 6, 7), (3, 4, 5, 6, 7)]   # extension only
    ladder = load_ladder(tmp_path / 'p.ladder.json', model_dir=model_dir)
    assert ladder.plan_id == plan_id(plan) and ladder.metric['n'] == 64
    assert 'wrote' in capsys.readouterr().out
    # other data: the unpruned model and every rung are scored there
    assert cli.main(['ladder', '--model', str(model_dir), '--plan', str(path), '--data', 'test',
                     '--n', '8', '--extra', '0', '--floor', '0.5', '--out',
                     str(tmp_path / 'other.ladder.json')]) == 0
    evaluator = FakeEvaluator.instances[-1]
    assert evaluator.calls[0] == () and len(evaluator.calls) == 1 + len(plan.trajectory)
    assert load_ladder(tmp_path / 'other.ladder.json').metric['split'] == 'test'
    bad = tmp_path / 'bad.json'
    plan.trajectory = []
    save_plan(plan, bad)
    assert cli.main(['ladder', '--model', str(model_dir), '--plan', str(bad)]) == 1
    assert 'records no trajectory' in capsys.readouterr().err
