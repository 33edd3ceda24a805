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
Token-skip calibration.

The K/R/KV search, the plan's `tokens`, calibrate --tokens, evaluate's token flags, the
evaluator and the torch backend with token skipping.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types

import pytest
from ros2_gmskip.errors import MetricError, PlanError
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.token_search import (
    candidates,
    choose_best,
    FLOPS_REFERENCE,
    search_tokens,
    Workload,
)
from ros2_gmskip.tokenskip.flops import DecoderDims, generation_flops
from ros2_gmskip.tokenskip.settings import FastVConfig, TokenSkip

DIMS = DecoderDims(layers=6, hidden=64, ffn=128)
WORK = Workload(dims=DIMS, n_tokens=40, n_image=16, new_tokens=10)
REMOVED = (4, 5)            # 4 blocks remain


def run(score, ks=(1, 2), rs=(0.5, 0.75), kv=(0.0, 1.0), removed=REMOVED, baseline=1.0,
        block_score=0.9, **objective):
    calls = []

    def score_fn(setting):
        calls.append(setting)
        return score(setting)
    result = search_tokens(score_fn, baseline=baseline, block_score=block_score,
                           removed_blocks=removed, workload=WORK, ks=ks, rs=rs, kv_ratios=kv,
                           objective=Objective(**{'lam': 0.3, **objective}), progress=False)
    return result, calls


def setting_of(step):
    return (step.k, step.r, step.setting.kv_ratio)


# --- the search, with a fake score --------------------------------------------------------------

def test_candidates_grid_skips_inactive_and_duplicates():
    grid = candidates([0, 1, 2, 3, 9], [0.0, 0.5], [0.0, 1.0, 1.0], remaining_blocks=3)
    assert grid[0] == TokenSkip()
    keys = [((g.fastv.k, g.fastv.r) if g.fastv else None, g.kv_ratio) for g in grid]
    assert keys == [(None, 0.0), (None, 1.0), ((0, 0.5), 0.0), ((0, 0.5), 1.0),
                    ((1, 0.5), 0.0), ((1, 0.5), 1.0), ((2, 0.5), 0.0), ((2, 0.5), 1.0)]


def test_trajectory_contents_and_flops():
    result, calls = run(lambda s: 0.9)
    off, *rest = result.trajectory
    assert setting_of(off) == (None, None, 0.0) and off.setting.is_off
    assert (off.score, off.score_ratio, off.flops_ratio) == (0.9, 0.9, 1.0)
    assert off.objective == pytest.approx(0.9)
    # 1 KV-only + 2 K x 2 R x 2 KV; "off" is the block plan's own score: never evaluated
    assert len(rest) == result.evaluations == len(calls) == 9
    assert TokenSkip() not in calls
    reference = generation_flops(DIMS, 40, 16, 10, REMOVED)
    for step in rest:
        flops = generation_flops(DIMS, 40, 16, 10, REMOVED, step.setting.fastv,
                                 step.setting.kv_ratio)
        assert step.flops_ratio == pytest.approx(flops / reference) and step.flops_ratio < 1
        assert step.objective == pytest.approx(step.score_ratio + 0.3 * (1 - step.flops_ratio))
        assert set(step.to_dict()) == {'k', 'r', 'kv_ratio', 'score', 'score_ratio',
                                       'flops_ratio', 'objective', 'feasible'}


def test_equal_scores_choose_the_fewest_flops():
    result, _ = run(lambda s: 0.9)
    assert setting_of(result.best) == (1, 0.75, 1.0)
    assert result.best.flops_ratio == min(s.flops_ratio for s in result.trajectory)
    assert result.best.setting == TokenSkip(fastv=FastVConfig(k=1, r=0.75), kv_ratio=1.0)


def test_ties_in_objective_go_to_fewer_flops():
    result, _ = run(lambda s: 0.9, lam=0.0)         # every J is 0.9
    assert len({round(s.objective, 9) for s in result.trajectory}) == 1
    assert setting_of(result.best) == (1, 0.75, 1.0)
    assert choose_best(list(reversed(result.trajectory))) is result.best


def test_score_loss_outweighs_flops():
    def score(s):       # K = 1 is harmful, K = 2 and KV removal cost a little
        k, r = (s.fastv.k, s.fastv.r) if s.fastv else (0, 0.0)
        return 0.9 - (0.2 if k == 1 else 0.04 * r) - 0.001 * s.kv_ratio
    result, _ = run(score)
    assert setting_of(result.best) == (2, 0.75, 1.0)
    result, _ = run(score, lam=0.001)                # FLOPs hardly matter: nothing is worth it
    assert result.best is result.trajectory[0]


def test_floor_is_against_the_unpruned_model():
    def score(s):
        return 0.85 if s.fastv is not None and s.fastv.r > 0.5 else 0.9
    result, _ = run(score, min_score_ratio=0.88)
    assert all(s.feasible == (s.score_ratio >= 0.88) for s in result.trajectory)
    assert [setting_of(s) for s in result.trajectory if not s.feasible] == [
        (1, 0.75, 0.0), (1, 0.75, 1.0), (2, 0.75, 0.0), (2, 0.75, 1.0)]
    assert setting_of(result.best) == (1, 0.5, 1.0)
    # S(plan) = 0.9 of a baseline of 2.0 is already below a 0.5 floor: nothing is feasible
    result, _ = run(score, baseline=2.0, min_score_ratio=0.5)
    assert not any(s.feasible for s in result.trajectory)
    assert result.best is result.trajectory[0] and result.best.setting.is_off


def test_k_at_or_above_the_remaining_blocks_is_skipped():
    result, calls = run(lambda s: 0.9, ks=(0, 3, 4, 7), rs=(0.5,), kv=(0.0,),
                        removed=(3, 4, 5))         # 3 blocks remain: only K = 0 can prune
    assert [setting_of(s) for s in result.trajectory] == [(None, None, 0.0), (0, 0.5, 0.0)]
    assert result.evaluations == len(calls) == 1


def test_record_for_the_plan():
    result, _ = run(lambda s: 0.9, min_score_ratio=0.8)
    record = result.to_record()
    assert record['fastv'] == {'k': 1, 'r': 0.75, 'seed': 0}
    assert record['kv_removal'] == {'ratio': 1.0, 'start_layer': 0}
    search = record['search']
    assert (search['lambda'], search['min_score_ratio'], search['evaluations']) == (0.3, 0.8, 9)
    assert search['flops_reference'] == FLOPS_REFERENCE
    assert search['workload'] == {'prompt_tokens': 40, 'image_tokens': 16, 'new_tokens': 10}
    assert len(search['trajectory']) == 10 and search['trajectory'][0]['k'] is None
    assert TokenSkip.from_dict(record) == result.best.setting
    json.dumps(record, allow_nan=False)
    # the best is "no token skipping": the search is still recorded, the settings are null
    off, _ = run(lambda s: 0.1, min_score_ratio=0.8)
    record = off.to_record()
    assert (record['fastv'], record['kv_removal']) == (None, None)
    assert record['search']['evaluations'] == 9 and TokenSkip.from_dict(record).is_off


@pytest.mark.parametrize('bad', [math.nan, math.inf, 'high'])
def test_bad_metric_values(bad):
    with pytest.raises(MetricError, match='for tokens KV removal 100%'):
        run(lambda s: bad)


def test_bad_inputs():
    with pytest.raises(MetricError, match='baseline score -1 is negative'):
        run(lambda s: 0.9, baseline=-1)
    with pytest.raises(MetricError, match='metric raised RuntimeError: boom'):
        run(lambda s: (_ for _ in ()).throw(RuntimeError('boom')))
    with pytest.raises(PlanError, match='removes all 6 blocks'):
        run(lambda s: 0.9, removed=range(6))


def test_plot(tmp_path):
    from ros2_gmskip.gmskip.plot import plot_token_search
    result, _ = run(lambda s: 0.9 - 0.1 * (s.fastv.r if s.fastv else 0), min_score_ratio=0.82)
    data = plot_token_search(result, tmp_path / 'tokens.png').read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000


# --- the plan's tokens ----------------------------------------------------------------------

@pytest.fixture
def plan_and_dir(tmp_path):
    from ros2_gmskip.gmskip.plan import SkipPlan
    from ros2_gmskip.gmskip.strategies import search
    folder = tmp_path / 'model'
    folder.mkdir()
    import numpy
    from safetensors.numpy import save_file
    save_file({'w': numpy.zeros(2, numpy.float32)}, str(folder / 'model.safetensors'))
    (folder / 'config.json').write_text('{}')
    blocks = search(lambda r: 1.0 - 0.01 * len(r), 6, progress=False)
    return SkipPlan.from_search(blocks, folder, family='llava', metric='accuracy'), folder


def test_plan_round_trip_with_tokens(plan_and_dir, tmp_path):
    from ros2_gmskip.gmskip.plan import load_plan, save_plan
    plan, folder = plan_and_dir
    result, _ = run(lambda s: 0.9)
    plan.tokens = result.to_record()
    loaded = load_plan(save_plan(plan, tmp_path / 'plan.json'), model_dir=folder)
    assert loaded.tokens == plan.tokens
    assert TokenSkip.from_dict(loaded.tokens) == result.best.setting


@pytest.mark.parametrize('tokens, message', [
    ({'fastv': {'k': 2}}, 'tokens: fastv must be'),
    ({'fastv': {'k': 2, 'r': 1.5}}, r'FastV R must be in \[0, 1\], got 1.5'),
    ({'fastv': {'k': -1, 'r': 0.5}}, 'FastV K must be an integer >= 0'),
    ({'fastv': {'k': 'two', 'r': 0.5}}, 'FastV K'),
    ({'kv_removal': {'ratio': 2}}, r'KV removal ratio must be in \[0, 1\]'),
    ({'kv_removal': 1.0}, 'tokens: kv_removal must be'),
    ({'kv_removal': {'ratio': 1.0, 'start_layer': -2}}, 'start_layer'),
    ('fastv', 'tokens must be null or an object'),
])
def test_malformed_tokens_are_rejected(plan_and_dir, tmp_path, tokens, message):
    from ros2_gmskip.gmskip.plan import load_plan
    plan, _ = plan_and_dir
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps({**plan.to_dict(), 'tokens': tokens}))
    with pytest.raises(PlanError, match=message) as info:
        load_plan(path)
    assert str(info.value).startswith(f'plan {path}: tokens') and '\n' not in str(info.value)


# --- calibrate --tokens with a fake evaluator ---------------------------------------------------

class FakeEvaluator:
    """8 blocks, additive block importances; FastV and KV removal cost a little score."""

    instances: list = []

    def __init__(self, model_dir, samples, metric, batch_size, trust_remote_code=False,
                 stack='decoder', object_parser=''):
        self.samples, self.metric = samples, metric
        self.num_blocks, self.family, self.evaluations = 8, 'llava', 0
        self.token_calls: list = []
        self.checked = False
        FakeEvaluator.instances.append(self)

    def score(self, removed, tokens=None):
        self.evaluations += 1
        value = 0.8 - 0.01 * sum(1 for b in removed if b >= 4) - 0.2 * sum(b < 4 for b in removed)
        if tokens is not None:
            self.token_calls.append((tuple(removed), tokens))
            if tokens.fastv is not None:
                value -= 0.05 * tokens.fastv.r / tokens.fastv.k
            value -= 0.001 * tokens.kv_ratio
        return value

    def check_tokens(self):
        self.checked = True

    def workload(self, removed):
        return Workload(dims=DecoderDims(layers=8, hidden=64, ffn=128), n_tokens=40, n_image=16,
                        new_tokens=12)


@pytest.fixture
def fake_calibration(monkeypatch, tmp_path):
    import ros2_gmskip.scenes as scenes
    monkeypatch.setattr(scenes, 'load_samples', lambda data, n: [f's{i}' for i in range(n)],
                        raising=False)
    module = types.ModuleType('ros2_gmskip.gmskip.evaluator')
    module.CalibrationEvaluator = FakeEvaluator
    monkeypatch.setitem(sys.modules, 'ros2_gmskip.gmskip.evaluator', module)
    FakeEvaluator.instances = []
    folder = tmp_path / 'model'
    folder.mkdir()
    import numpy
    from safetensors.numpy import save_file
    save_file({'w': numpy.zeros(2, numpy.float32)}, str(folder / 'model.safetensors'))
    (folder / 'config.json').write_text('{}')
    return folder


def verb_args(verb, argv):
    parser = argparse.ArgumentParser(prog=f'ros2-gmskip {verb.__name__.rsplit(".", 1)[-1]}')
    verb.add_arguments(parser)
    return parser.parse_args(argv)


def test_calibrate_tokens_with_fake_evaluator(fake_calibration, tmp_path, capsys):
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate
    out, png = tmp_path / 'plan.json', tmp_path / 'plots' / 'plan.png'
    args = verb_args(calibrate, ['--model', str(fake_calibration), '--n', '4', '--tokens',
                                 '--min-score-ratio', '0.9', '--fastv-k', '1,2,9',
                                 '--fastv-r', '0.5,0.75', '--out', str(out), '--plot', str(png),
                                 '--no-progress', '--no-ladder'])
    assert (args.fastv_k, args.fastv_r, args.kv_ratio) == ([1, 2, 9], [0.5, 0.75], None)
    assert calibrate.main(args) == 0
    evaluator, = FakeEvaluator.instances
    assert evaluator.checked
    plan = load_plan(out, model_dir=fake_calibration)
    assert plan.removed_blocks == [4, 5, 6, 7]
    assert {removed for removed, _ in evaluator.token_calls} == {(4, 5, 6, 7)}
    search = plan.tokens['search']
    # KV-only + K in {1, 2} (9 >= 4 kept blocks) x R in {0.5, 0.75} x KV in {0, 1} (default)
    assert search['evaluations'] == len(evaluator.token_calls) == 9
    assert plan.evaluations == evaluator.evaluations - 9          # the block search's own count
    assert len(search['trajectory']) == 10 and search['min_score_ratio'] == 0.9
    chosen = TokenSkip.from_dict(plan.tokens)
    best = max((s for s in search['trajectory'] if s['feasible']),
               key=lambda s: (round(s['objective'], 9), -s['flops_ratio']))
    assert (chosen.fastv.k, chosen.fastv.r, chosen.kv_ratio) == (
        best['k'], best['r'], best['kv_ratio'])
    assert all(s['score_ratio'] >= 0.9 for s in search['trajectory'] if s['feasible'])
    assert png.read_bytes()[:4] == b'\x89PNG'
    assert (tmp_path / 'plots' / 'plan-tokens.png').read_bytes()[:4] == b'\x89PNG'
    text = capsys.readouterr().out
    assert f'tokens: {chosen.describe()}: accuracy' in text and '9 evaluations' in text
    assert 'FLOPs at 12 generated tokens' in text
    assert sum(line.startswith(' ') and '*' in line[:5] for line in text.splitlines()) == 2


def test_calibrate_ladder_rungs_are_scored_with_the_chosen_tokens(fake_calibration, tmp_path):
    from ros2_gmskip.gmskip.ladder import load_ladder
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    args = verb_args(calibrate, ['--model', str(fake_calibration), '--n', '4', '--tokens',
                                 '--min-score-ratio', '0.9', '--ladder-floor', '0.5',
                                 '--out', str(out), '--no-progress'])
    assert calibrate.main(args) == 0
    evaluator, = FakeEvaluator.instances
    plan, ladder = load_plan(out), load_ladder(tmp_path / 'plan.ladder.json')
    chosen = TokenSkip.from_dict(plan.tokens)
    assert TokenSkip.from_dict(ladder.tokens) == chosen
    rescored = {removed for removed, tokens in evaluator.token_calls if tokens == chosen}
    assert {r.removed_blocks for r in ladder.rungs} <= rescored
    assert all(r.flops_ratio < 1.0 for r in ladder.rungs)          # FastV on every rung


def test_calibrate_without_tokens_leaves_them_null(fake_calibration, tmp_path):
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    args = verb_args(calibrate, ['--model', str(fake_calibration), '--n', '4', '--out', str(out),
                                 '--no-progress'])
    assert calibrate.main(args) == 0
    evaluator, = FakeEvaluator.instances
    assert not evaluator.checked and evaluator.token_calls == []
    assert load_plan(out).tokens is None


def test_calibrate_grid_option_implies_tokens(fake_calibration, tmp_path):
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    args = verb_args(calibrate, ['--model', str(fake_calibration), '--n', '4', '--out', str(out),
                                 '--kv-ratio', '1', '--no-progress'])
    assert calibrate.main(args) == 0
    search = load_plan(out).tokens['search']
    assert {s['kv_ratio'] for s in search['trajectory']} == {0.0, 1.0}
    assert search['evaluations'] == 1 + 3 * 3            # KV only + default K x R, all with KV 1


@pytest.mark.parametrize('argv, message', [
    (['--fastv-k', '1,x'], 'argument --fastv-k: expected a comma-separated list of integers'),
    (['--fastv-k', '-1'], 'expected a comma-separated list of integers >= 0'),
    (['--fastv-r', '0.5,1.5'], 'argument --fastv-r: expected a comma-separated list of numbers'),
    (['--kv-ratio', '2'], 'argument --kv-ratio: expected a comma-separated list of numbers'),
])
def test_calibrate_token_argument_errors(capsys, argv, message):
    from ros2_gmskip.verbs import calibrate
    with pytest.raises(SystemExit):
        verb_args(calibrate, ['--out', 'p.json', *argv])
    error, = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert message in error                                  # one line after the usage


# --- evaluate's token flags -----------------------------------------------------------------

def test_evaluate_flags_parse():
    from ros2_gmskip.verbs import evaluate
    args = verb_args(evaluate, ['--fastv', '2,0.5', '--kv-removal', '1', '--no-plan-tokens'])
    assert args.fastv == FastVConfig(k=2, r=0.5) and args.kv_removal == 1.0
    assert args.no_plan_tokens
    args = verb_args(evaluate, [])
    assert (args.fastv, args.kv_removal, args.no_plan_tokens) == (None, None, False)


@pytest.mark.parametrize('argv, message', [
    (['--fastv', '2'], "argument --fastv: expected K,R (e.g. 2,0.5), got '2'"),
    (['--fastv', '2,1.5'], 'argument --fastv: FastV R must be in [0, 1], got 1.5'),
    (['--fastv', 'a,b'], 'argument --fastv: expected K,R with an integer K'),
    (['--kv-removal', '1.5'], 'argument --kv-removal: expected a number in [0, 1]'),
])
def test_evaluate_flag_errors(capsys, argv, message):
    from ros2_gmskip.verbs import evaluate
    with pytest.raises(SystemExit):
        verb_args(evaluate, argv)
    error, = [line for line in capsys.readouterr().err.splitlines() if 'error:' in line]
    assert message in error                                  # one line after the usage


def test_token_options_merge_one_way_in_every_verb():
    import argparse

    from ros2_gmskip.tokenskip.settings import resolve_token_skip
    from ros2_gmskip.verbs import bench, describe, evaluate, export, heal, replay
    from ros2_gmskip.verbs.token_options import token_skip_from_args
    plan = {'fastv': {'k': 2, 'r': 0.5, 'seed': 0},
            'kv_removal': {'ratio': 1.0, 'start_layer': 1}, 'search': {}}
    assert resolve_token_skip(None) == TokenSkip()
    assert resolve_token_skip(plan) == TokenSkip(FastVConfig(2, 0.5), kv_ratio=1.0, kv_start=1)
    assert resolve_token_skip(plan, fastv=FastVConfig(1, 0.25)) == TokenSkip(
        FastVConfig(1, 0.25), kv_ratio=1.0, kv_start=1)
    assert resolve_token_skip(plan, kv_ratio=0.0) == TokenSkip(FastVConfig(2, 0.5), kv_start=1)
    assert resolve_token_skip(None, FastVConfig(3, 0.75), 0.5) == TokenSkip(FastVConfig(3, 0.75),
                                                                            0.5)
    assert resolve_token_skip(plan, kv_start=2, use_plan=False) == TokenSkip(kv_start=2)
    required = {export: ['--out', 'x'], heal: ['--out', 'x'], describe: ['frame.png'],
                replay: ['bag', '--out', 'x'], evaluate: [], bench: []}
    for verb, argv in required.items():
        parser = argparse.ArgumentParser()
        verb.add_arguments(parser)
        args = parser.parse_args(argv)
        assert token_skip_from_args(args, plan) is None, verb     # nothing given: the plan's
        args = parser.parse_args(argv + ['--kv-start', '3', '--fastv', '1,0.5'])
        assert token_skip_from_args(args, plan) == TokenSkip(FastVConfig(1, 0.5), kv_ratio=1.0,
                                                             kv_start=3), verb
        args = parser.parse_args(argv + ['--no-plan-tokens', '--kv-removal', '0.5'])
        assert token_skip_from_args(args, plan) == TokenSkip(kv_ratio=0.5), verb


# --- on a tiny random model -----------------------------------------------------------------

def chars(predictions, references) -> float:
    """Score 1 + mean characters per description: a metric a random model scores above 0 on."""
    return 1.0 + sum(len(p) for p in predictions) / max(len(predictions), 1)


def test_generated_lengths_count_up_to_the_stop_token():
    from ros2_gmskip.gmskip.evaluator import generated_lengths
    import torch
    new = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert generated_lengths(new, [2]) == [2, 4, 1]
    assert generated_lengths(new, [2, 7]) == [2, 3, 1]
    assert generated_lengths(new, []) == [4, 4, 4]


@pytest.fixture
def evaluator(tiny_model_dir):
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    from ros2_gmskip.scenes import load_samples
    from ros2_gmskip.vlm.loading import load_vlm
    model, processor = load_vlm(tiny_model_dir)        # its own copy: the evaluator wraps it
    model.set_attn_implementation('eager')             # the functional path's operation order
    return CalibrationEvaluator(None, load_samples('val', 4, width=160, height=120),
                                metric=f'{__name__}:chars', batch_size=2, max_new_tokens=8,
                                model=model, processor=processor)


def test_evaluator_token_path_reuses_vision_and_matches_generate(evaluator, monkeypatch):
    import ros2_gmskip.tokenskip.reference as reference
    functional = []
    original = reference.kv_removal_generate_ids

    def spy(model, inputs, cfg, *args, **kwargs):
        functional.append((cfg.ratio, kwargs['fastv']))
        return original(model, inputs, cfg, *args, **kwargs)
    monkeypatch.setattr(reference, 'kv_removal_generate_ids', spy)
    towers = []      # real vision passes, however the tower is reached
    evaluator.vision.inner.register_forward_hook(lambda *a: towers.append(1))

    plain = evaluator.predictions((2,))
    assert evaluator.vision.calls == len(towers) == 2         # two batches
    # R = 0 is off (model.generate); K >= blocks runs the functional path but prunes nothing
    assert evaluator.predictions((2,), TokenSkip(fastv=FastVConfig(k=1, r=0.0))) == plain
    assert functional == []
    assert evaluator.predictions((2,), TokenSkip(fastv=FastVConfig(k=3, r=0.5))) == plain
    assert functional == [(0.0, FastVConfig(k=3, r=0.5))] * 2
    pruned = evaluator.predictions((2,), TokenSkip(fastv=FastVConfig(k=1, r=0.75), kv_ratio=1.0))
    assert len(pruned) == 4 and all(isinstance(t, str) for t in pruned)
    assert functional[-1] == (1.0, FastVConfig(k=1, r=0.75))
    assert evaluator.vision.calls == len(towers) == 2         # cached features served every path
    assert 1 <= evaluator.mean_new_tokens((2,)) <= 8
    assert evaluator.score((2,), TokenSkip(kv_ratio=1.0)) > 0
    work = evaluator.workload((2,))
    assert (work.dims.layers, work.n_image) == (4, 16) and work.n_tokens > work.n_image
    assert work.new_tokens == max(1, round(evaluator.mean_new_tokens((2,))))


def test_calibrate_tokens_end_to_end(tiny_model_dir, tmp_path, capsys):
    from ros2_gmskip.gmskip.plan import load_plan
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    args = verb_args(calibrate, ['--model', str(tiny_model_dir), '--n', '4', '--batch-size', '4',
                                 '--metric', f'{__name__}:chars', '--protect-first', '2',
                                 '--tokens', '--fastv-k', '1', '--fastv-r', '0.5',
                                 '--out', str(out), '--no-progress'])
    assert calibrate.main(args) == 0
    plan = load_plan(out, model_dir=tiny_model_dir)
    search = plan.tokens['search']
    kept = 4 - len(plan.removed_blocks)
    assert search['evaluations'] == (3 if kept > 1 else 1)    # KV only (+ FastV K=1, KV 0 / 1)
    assert search['trajectory'][0]['flops_ratio'] == 1.0
    assert search['workload']['image_tokens'] == 16
    assert 'token search on the block plan' in capsys.readouterr().out


def test_evaluate_verb_with_tokens(tiny_model_dir, tmp_path, capsys, make_plan):
    from ros2_gmskip.verbs import evaluate
    plan = make_plan(tiny_model_dir, [3], tmp_path / 'plan.json')
    data = json.loads(plan.read_text())
    data['tokens'] = {'fastv': {'k': 1, 'r': 0.5, 'seed': 0}, 'kv_removal': None}
    plan.write_text(json.dumps(data))
    base = ['--model', str(tiny_model_dir), '--plan', str(plan), '--split', 'val', '--n', '2',
            '--show', '0', '--json']
    assert evaluate.main(verb_args(evaluate, base)) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['tokens'] == data['tokens'] and result['removed_blocks'] == [3]
    assert evaluate.main(verb_args(evaluate, base + ['--kv-removal', '1'])) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result['tokens'] == {'fastv': {'k': 1, 'r': 0.5, 'seed': 0},
                                'kv_removal': {'ratio': 1.0, 'start_layer': 0}}
    assert evaluate.main(verb_args(evaluate, base + ['--no-plan-tokens'])) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['tokens'] is None


def test_torch_backend_with_tokens(tiny_model_dir, tmp_path, scene_images, make_plan):
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    plain = TorchBackend(tiny_model_dir, threads=1)
    inactive = TorchBackend(tiny_model_dir, threads=1,             # K >= blocks: prunes nothing
                            tokens=TokenSkip(fastv=FastVConfig(k=4, r=0.5)))
    for backend in (plain, inactive):
        backend.model.set_attn_implementation('eager')
    for image in scene_images[:2]:
        want = plain.describe(image, max_new_tokens=8)
        got = inactive.describe(image, max_new_tokens=8)
        assert (got.text, got.tokens) == (want.text, want.tokens)
        assert got.latency.decode_tokens == want.latency.decode_tokens

    setting = TokenSkip(fastv=FastVConfig(k=1, r=0.75), kv_ratio=1.0)
    backend = TorchBackend(tiny_model_dir, threads=1, tokens=setting)
    assert backend.info.tokens == setting
    result = backend.describe(scene_images[0], max_new_tokens=8)
    assert isinstance(result.text, str) and 1 <= result.tokens <= 8
    lat = result.latency
    assert min(lat.preprocess_ms, lat.vision_ms, lat.prefill_ms, lat.decode_ms) >= 0
    assert lat.total_ms >= lat.vision_ms + lat.prefill_ms + lat.decode_ms
    assert lat.decode_tokens <= 7

    # the plan's tokens apply unless tokens= says otherwise (even "off")
    plan = make_plan(tiny_model_dir, [3], tmp_path / 'plan.json')
    data = json.loads(plan.read_text())
    data['tokens'] = setting.to_dict()
    plan.write_text(json.dumps(data))
    from_plan = TorchBackend(tiny_model_dir, plan=plan, threads=1)
    assert from_plan.info.tokens == setting
    assert from_plan.info.blocks_removed == (3,)
    assert from_plan.describe(scene_images[1], max_new_tokens=4).tokens <= 4
    assert TorchBackend(tiny_model_dir, plan=plan, threads=1,
                        tokens=TokenSkip()).info.tokens.is_off
