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

"""Skip plans (format, validation, atomic writes), the search plot, calibrate and prune."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import types

import pytest
from ros2_gmskip.errors import DatasetError, GmSkipError, ModelLoadError, PlanError
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.plan import FORMAT, load_plan, plan_id, save_plan, SkipPlan, weights_sha256
from ros2_gmskip.gmskip.strategies import search
import torch

torch.set_num_threads(1)

IMPORTANCE = [0.5, 0.3, 0.2, 0.01, 0.1, 0.02, 0.005, 0.03]   # as in test_strategies


def additive(removed):
    return 1.0 - sum(IMPORTANCE[b] for b in removed)


def shard(path, value: float) -> None:
    """Write a valid one-tensor safetensors file whose bytes depend on `value`."""
    from safetensors.torch import save_file
    save_file({'w': torch.full((2,), value)}, str(path))


@pytest.fixture
def model_dir(tmp_path):
    """Return a folder with two tiny valid weight shards: enough for the checks and the hash."""
    folder = tmp_path / 'model'
    folder.mkdir()
    shard(folder / 'model-00002-of-00002.safetensors', 2.0)
    shard(folder / 'model-00001-of-00002.safetensors', 1.0)
    (folder / 'config.json').write_text('{}')
    return folder


@pytest.fixture
def result():
    return search(additive, len(IMPORTANCE), objective=Objective(lam=0.3, min_score_ratio=0.9),
                  progress=False)


@pytest.fixture
def plan(result, model_dir):
    return SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy',
                                split='val', n=64)


# --- weights hash, format, round trip ------------------------------------------------------

def test_weights_sha256_is_over_sorted_safetensors(model_dir, tmp_path):
    expected = hashlib.sha256(
        (model_dir / 'model-00001-of-00002.safetensors').read_bytes()
        + (model_dir / 'model-00002-of-00002.safetensors').read_bytes()).hexdigest()
    assert weights_sha256(model_dir) == expected
    (model_dir / 'notes.txt').write_text('not weights')
    assert weights_sha256(model_dir) == expected
    with pytest.raises(ModelLoadError, match='no \\*.safetensors'):
        weights_sha256(tmp_path)
    with pytest.raises(ModelLoadError, match='no such model folder'):
        weights_sha256(tmp_path / 'missing')


def test_round_trip(plan, model_dir, tmp_path):
    data = plan.to_dict()
    assert data['format'] == FORMAT
    assert data['removed_blocks'] == [3, 5, 6, 7]
    assert data['model'] == {'path': str(model_dir), 'sha256': weights_sha256(model_dir),
                             'family': 'llava', 'num_blocks': 8}
    assert data['metric'] == {'name': 'accuracy', 'baseline': 1.0,
                              'final': pytest.approx(0.935), 'split': 'val', 'n': 64}
    assert data['objective'] == {'lambda': 0.3, 'min_score_ratio': 0.9, 'max_sparsity': None,
                                 'tolerance': 0.0}
    assert data['tokens'] is None and data['evaluations'] == 7
    assert data['created_by'].startswith('ros2_gmskip ')
    assert data['trajectory'][0]['removed'] == [] and data['trajectory'][-1]['block'] == 3

    path = save_plan(plan, tmp_path / 'plans' / 'plan.json')      # parent folder is created
    loaded = load_plan(path, model_dir=model_dir)
    assert loaded.to_dict() == data
    assert plan_id(loaded) == plan_id(plan) and len(plan_id(plan)) == 12
    assert loaded.kept_blocks == [0, 1, 2, 4]
    assert loaded.sparsity == 0.5
    other = SkipPlan.from_dict({**data, 'removed_blocks': [7]})
    assert plan_id(other) != plan_id(plan)


def test_wrong_model_hash(plan, model_dir, tmp_path):
    path = save_plan(plan, tmp_path / 'plan.json')
    shard(model_dir / 'model-00001-of-00002.safetensors', 3.0)          # retrained
    with pytest.raises(PlanError, match=r'was made for model sha256 [0-9a-f]{12}, but .* has '
                                        r'[0-9a-f]{12}: re-run ros2-gmskip calibrate'):
        load_plan(path, model_dir=model_dir)
    assert load_plan(path, model_dir=model_dir, check_hash=False).removed_blocks == [3, 5, 6, 7]
    assert load_plan(path).removed_blocks == [3, 5, 6, 7]


def _set(data, dotted, value):
    *parents, key = dotted.split('.')
    for parent in parents:
        data = data[parent]
    if value is KeyError:
        del data[key]
    else:
        data[key] = value


@pytest.mark.parametrize('field, value, message', [
    ('format', 'ros2_gmskip/skip-plan@2', "format 'ros2_gmskip/skip-plan@2' is not"),
    ('model', KeyError, "missing required key 'model'"),
    ('model.sha256', KeyError, "missing required key 'model.sha256'"),
    ('model.num_blocks', '8', "model.num_blocks is '8': expected int"),
    ('model.num_blocks', 0, 'expected at least 1'),
    ('removed_blocks', [3, 8], 'removed block 8 out of range: the model has 8 decoder blocks'),
    ('removed_blocks', [-1], 'removed block -1 out of range'),
    ('removed_blocks', [3, 3], r'lists \[3\] more than once'),
    ('removed_blocks', list(range(8)), 'removes all 8 blocks'),
    ('removed_blocks', [1.5], 'expected block indices'),
    ('removed_blocks', [True], 'expected block indices'),
    ('removed_blocks', '3,5', "removed_blocks is '3,5': expected list"),
    ('stack', 'encoder', "stack 'encoder' is not one of"),
    ('metric.baseline', 'high', 'metric.baseline is'),
    ('metric.final', float('nan'), 'expected a finite number'),
    ('objective.lambda', -1, 'objective: lambda -1.0 must be'),
    ('trajectory', [{'removed': [1]}], 'trajectory step 0 is malformed'),
    ('strategy', None, 'strategy is None: expected str'),
    ('tokens', [1], 'tokens must be null or an object'),
])
def test_invalid_plans(plan, tmp_path, field, value, message):
    data = plan.to_dict()
    _set(data, field, value)
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=message) as info:
        load_plan(path)
    assert str(info.value).startswith(f'plan {path}: ')
    assert '\n' not in str(info.value)


def test_unreadable_plans(tmp_path):
    with pytest.raises(PlanError, match='no such plan file'):
        load_plan(tmp_path / 'missing.json')
    (tmp_path / 'trunc.json').write_text('{"format": "ros2_gmskip/skip-plan@1", "model": {')
    with pytest.raises(PlanError, match='is not valid JSON .* at line 1 column'):
        load_plan(tmp_path / 'trunc.json')
    (tmp_path / 'list.json').write_text('[1, 2]')
    with pytest.raises(PlanError, match='expected a JSON object, got list'):
        load_plan(tmp_path / 'list.json')
    (tmp_path / 'bin.json').write_bytes(b'\xff\xfe\x00')
    with pytest.raises(PlanError, match='not UTF-8'):
        load_plan(tmp_path / 'bin.json')


def test_save_is_atomic(plan, tmp_path, monkeypatch):
    path = save_plan(plan, tmp_path / 'plan.json')
    good = path.read_bytes()

    bad = SkipPlan.from_dict(plan.to_dict())
    bad.tokens = {'fastv': object()}                     # not JSON-serialisable
    with pytest.raises(PlanError, match='cannot write plan'):
        save_plan(bad, path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ['model', 'plan.json']

    def failing_replace(src, dst):
        raise OSError('disk full')
    monkeypatch.setattr(os, 'replace', failing_replace)
    other = SkipPlan.from_dict({**plan.to_dict(), 'removed_blocks': [7]})
    with pytest.raises(OSError, match='disk full'):
        save_plan(other, path)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ['model', 'plan.json']     # temp file removed


def test_plot_writes_png(result, tmp_path):
    from ros2_gmskip.gmskip.plot import plot_search
    greedy = search(additive, 8, strategy='greedy',
                    objective=Objective(min_score_ratio=0.95, max_sparsity=0.75), progress=False)
    for name, res in (('reverse.png', result), ('greedy.png', greedy)):
        path = plot_search(res, tmp_path / 'plots' / name, title='test')
        data = path.read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000


# --- calibrate, with a fake evaluator ------------------------------------------------------

class FakeEvaluator:
    """Stands in for gmskip.evaluator.CalibrationEvaluator: 8 blocks, additive importances."""

    instances: list[FakeEvaluator] = []
    stop_after: int | None = None       # raise KeyboardInterrupt at this many evaluations

    def __init__(self, model_dir, samples, metric, batch_size, trust_remote_code=False,
                 stack='decoder', object_parser=''):
        self.model_dir, self.samples, self.metric = model_dir, samples, metric
        self.batch_size, self.trust_remote_code, self.stack = batch_size, trust_remote_code, stack
        self.num_blocks, self.family, self.evaluations = 8, 'gmskip_llava', 0
        FakeEvaluator.instances.append(self)

    def score(self, removed, tokens=None):
        if self.evaluations == self.stop_after:
            raise KeyboardInterrupt
        self.evaluations += 1
        return 0.8 * additive(removed)

    def workload(self, removed=()):
        from ros2_gmskip.gmskip.token_search import Workload
        from ros2_gmskip.tokenskip.flops import DecoderDims
        return Workload(DecoderDims(layers=8, hidden=64, ffn=128), n_tokens=30, n_image=16,
                        new_tokens=10)


@pytest.fixture
def fake_calibration(monkeypatch):
    import ros2_gmskip.scenes as scenes
    calls = []

    def load_samples(data, n):
        calls.append((data, n))
        return [] if data == 'empty' else [f'sample{i}' for i in range(n)]
    monkeypatch.setattr(scenes, 'load_samples', load_samples, raising=False)
    module = types.ModuleType('ros2_gmskip.gmskip.evaluator')
    module.CalibrationEvaluator = FakeEvaluator
    monkeypatch.setitem(sys.modules, 'ros2_gmskip.gmskip.evaluator', module)
    FakeEvaluator.instances = []
    FakeEvaluator.stop_after = None
    return calls


def verb_args(verb, argv):
    parser = argparse.ArgumentParser(prog=f'ros2-gmskip {verb.__name__.rsplit(".", 1)[-1]}')
    verb.add_arguments(parser)
    return parser.parse_args(argv)


def test_calibrate_writes_plan_and_plot(fake_calibration, model_dir, tmp_path, capsys):
    from ros2_gmskip.verbs import calibrate
    out, png = tmp_path / 'out' / 'plan.json', tmp_path / 'out' / 'plan.png'
    args = verb_args(calibrate, ['--model', str(model_dir), '--data', 'val', '--n', '12',
                                 '--strategy', 'greedy', '--lambda', '0.3',
                                 '--protect-first', '2', '--min-score-ratio', '0.95',
                                 '--batch-size', '4', '--out', str(out), '--plot', str(png),
                                 '--no-progress'])
    assert calibrate.main(args) == 0
    assert fake_calibration == [('val', 12)]
    evaluator, = FakeEvaluator.instances
    assert (evaluator.metric, evaluator.batch_size, len(evaluator.samples)) == ('accuracy', 4, 12)
    assert evaluator.stack == 'decoder'
    plan = load_plan(out, model_dir=model_dir)
    assert plan.removed_blocks == [3, 5, 6]
    assert plan.strategy == 'greedy' and plan.protect_first == 2
    assert plan.model.family == 'gmskip_llava' and plan.model.num_blocks == 8
    assert (plan.metric.split, plan.metric.n, plan.metric.baseline) == ('val', 12, 0.8)
    assert plan.evaluations == evaluator.evaluations == 1 + 6 + 5 + 4 + 3 + 2 + 1
    assert png.read_bytes()[:4] == b'\x89PNG'
    text = capsys.readouterr().out
    assert 'plan: remove 3/8 decoder blocks [3, 5, 6]' in text
    assert f'wrote {out} (plan id {plan_id(plan)})' in text
    assert '  3*' in text                                  # chosen row marked in the table
    from ros2_gmskip.gmskip.ladder import load_ladder
    ladder = load_ladder(tmp_path / 'out' / 'plan.ladder.json', model_dir=model_dir)
    assert ladder.plan_id == plan_id(plan) and list(ladder.plan_removed) == [3, 5, 6]
    assert f'wrote {tmp_path / "out" / "plan.ladder.json"} ({len(ladder.rungs)} rungs' in text


def test_calibrate_ladder_extends_a_reverse_plan(fake_calibration, model_dir, tmp_path, capsys):
    from ros2_gmskip.gmskip.ladder import load_ladder
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    args = verb_args(calibrate, ['--model', str(model_dir), '--n', '12', '--protect-first', '2',
                                 '--min-score-ratio', '0.9', '--ladder-extra', '1',
                                 '--ladder-floor', '0.5', '--out', str(out), '--no-progress'])
    assert calibrate.main(args) == 0
    evaluator, = FakeEvaluator.instances
    plan = load_plan(out)
    ladder = load_ladder(tmp_path / 'plan.ladder.json')
    assert [r.origin for r in ladder.rungs][0] == 'extension'
    assert set(ladder.rungs[0].removed_blocks) > set(plan.removed_blocks)
    # the extension's candidates not evaluated by the search cost evaluations; the rest is known
    assert evaluator.evaluations > plan.evaluations
    assert 'ladder (fastest first' in capsys.readouterr().out
    args = verb_args(calibrate, ['--model', str(model_dir), '--out', str(tmp_path / 'q.json'),
                                 '--no-ladder', '--no-progress'])
    assert calibrate.main(args) == 0
    assert not (tmp_path / 'q.ladder.json').exists()


def test_calibrate_errors(fake_calibration, model_dir, tmp_path):
    from ros2_gmskip.verbs import calibrate
    args = verb_args(calibrate, ['--model', str(model_dir), '--data', 'empty',
                                 '--out', str(tmp_path / 'p.json')])
    with pytest.raises(DatasetError, match="no calibration samples in 'empty'"):
        calibrate.main(args)
    args = verb_args(calibrate, ['--model', str(model_dir), '--out', str(tmp_path)])
    with pytest.raises(PlanError, match='is a folder'):
        calibrate.main(args)
    weightless = tmp_path / 'weightless'
    weightless.mkdir()
    args = verb_args(calibrate, ['--model', str(weightless), '--out', str(tmp_path / 'p.json')])
    with pytest.raises(ModelLoadError, match='no \\*.safetensors'):
        calibrate.main(args)
    assert FakeEvaluator.instances == []                   # failed before any evaluation


@pytest.mark.parametrize('argv, message', [
    (['--protect-first', '1.5'], 'expected a block count >= 0 or a fraction in [0, 1)'),
    (['--protect-first', '-2'], 'expected a block count'),
    (['--lambda', '-0.1'], 'expected a number >= 0'),
    (['--min-score-ratio', '0'], 'expected a number > 0'),
    (['--max-sparsity', '2'], 'expected a number in [0, 1]'),
    (['--strategy', 'random'], 'invalid choice'),
    (['--n', '0'], 'expected a positive integer'),
])
def test_calibrate_argument_errors(model_dir, tmp_path, capsys, argv, message):
    from ros2_gmskip.verbs import calibrate
    with pytest.raises(SystemExit):
        verb_args(calibrate, ['--model', str(model_dir), '--out', 'p.json', *argv])
    assert message in capsys.readouterr().err


def test_calibrate_argument_defaults(model_dir):
    from ros2_gmskip.verbs import calibrate
    args = verb_args(calibrate, ['--model', str(model_dir), '--out', 'p.json',
                                 '--protect-first', '4'])
    assert (args.data, args.n, args.metric, args.strategy, args.lam) == (
        'val', 128, 'accuracy', 'reverse', 0.3)
    assert args.protect_first == 4 and isinstance(args.protect_first, int)
    assert args.min_score_ratio is None and args.max_sparsity is None and args.tolerance == 0.0
    assert not args.trust_remote_code


# --- prune, end to end on a tiny LLaVA ---------------------------------------------------------

def tiny_llava_folder(folder, with_processor=True):
    """Save a random LlavaForConditionalGeneration (6 decoder blocks) + a tiny LlavaProcessor."""
    import transformers as tf
    torch.manual_seed(0)
    config = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          image_size=32, patch_size=8),
        text_config=tf.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=6, num_attention_heads=4,
                                   num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2),
        image_token_index=7)
    model = tf.LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    if with_processor:
        from tokenizers import models, pre_tokenizers, Tokenizer
        words = ['<pad>', '<s>', '</s>', '<unk>', 'a', 'car', 'road', '<image>']
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>'))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = tf.PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token='<pad>', bos_token='<s>', eos_token='</s>',
            unk_token='<unk>', extra_special_tokens={'image_token': '<image>'})
        images = tf.CLIPImageProcessor(size={'shortest_edge': 32},
                                       crop_size={'height': 32, 'width': 32})
        tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy='default', image_token='<image>',
                          num_additional_image_tokens=1).save_pretrained(folder)
    return model


def llava_inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([[1, 4] + [7] * 16 + [5, 6]])
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
            'pixel_values': torch.randn(1, 3, 32, 32, generator=g)}


def make_plan(model_dir, removed, path):
    result = search(lambda r: 1.0, 6, protect_first=0, progress=False)
    plan = SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy')
    plan.removed_blocks = removed
    return save_plan(plan, path)


def test_prune_end_to_end(tmp_path, capsys):
    from ros2_gmskip.verbs import prune
    from ros2_gmskip.vlm.blocks import decoder_stack, remove_blocks
    import transformers as tf
    source = tmp_path / 'model'
    model = tiny_llava_folder(source)
    plan_path = make_plan(source, [1, 4], tmp_path / 'plan.json')
    (source / 'draft_ngrams.json').write_text('{"format": "table"}')   # carried over as is
    out = tmp_path / 'pruned'
    args = verb_args(prune, ['--model', str(source), '--plan', str(plan_path),
                             '--out', str(out)])
    assert prune.main(args) == 0
    assert 'removed decoder blocks [1, 4] (6 -> 4)' in capsys.readouterr().out

    files = set(os.listdir(out))
    assert {'config.json', 'model.safetensors', 'gmskip_prune.json', 'tokenizer.json',
            'processor_config.json', 'draft_ngrams.json'} <= files
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]   # no temp folders left
    manifest = json.loads((out / 'gmskip_prune.json').read_text())
    assert manifest['plan_id'] == plan_id(load_plan(plan_path))
    assert manifest['removed_blocks'] == [1, 4]
    assert manifest['num_blocks'] == {'before': 6, 'after': 4}
    assert manifest['source']['sha256'] == weights_sha256(source)
    assert manifest['sha256'] == weights_sha256(out)

    pruned = tf.AutoModelForImageTextToText.from_pretrained(out).eval()
    assert decoder_stack(pruned).num_blocks == 4
    assert pruned.config.text_config.num_hidden_layers == 4
    with torch.no_grad():
        expected = remove_blocks(model, [1, 4])(**llava_inputs()).logits
        assert torch.equal(pruned(**llava_inputs()).logits, expected)
    assert type(tf.AutoProcessor.from_pretrained(out)).__name__ == 'LlavaProcessor'

    # an existing non-empty --out is refused, and replaced with --force
    with pytest.raises(GmSkipError, match='exists and is not empty'):
        prune.main(args)
    plan2 = make_plan(source, [5], tmp_path / 'plan2.json')
    args = verb_args(prune, ['--model', str(source), '--plan', str(plan2), '--out', str(out),
                             '--force'])
    assert prune.main(args) == 0
    assert json.loads((out / 'gmskip_prune.json').read_text())['removed_blocks'] == [5]
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]


def test_prune_refusals(tmp_path, caplog):
    from ros2_gmskip.verbs import prune
    source = tmp_path / 'model'
    tiny_llava_folder(source, with_processor=False)
    plan_path = make_plan(source, [2], tmp_path / 'plan.json')

    # a plan made for other weights
    other = tmp_path / 'other'
    other.mkdir()
    shard(other / 'model.safetensors', 5.0)
    (other / 'config.json').write_text('{}')
    args = verb_args(prune, ['--model', str(other), '--plan', str(plan_path),
                             '--out', str(tmp_path / 'out')])
    with pytest.raises(PlanError, match='was made for model sha256'):
        prune.main(args)
    # corrupt weights are blamed on the weights, not on the plan
    (other / 'model.safetensors').write_bytes(b'other weights')
    with pytest.raises(ModelLoadError, match='corrupt safetensors file'):
        prune.main(args)

    # unloadable models (the hash matches a plan made for them): corrupt weights, then valid
    # weights with a config that names no architecture
    broken_plan = make_plan(other, [2], tmp_path / 'broken.json')
    args = verb_args(prune, ['--model', str(other), '--plan', str(broken_plan),
                             '--out', str(tmp_path / 'out')])
    with pytest.raises(ModelLoadError, match='corrupt safetensors file'):
        prune.main(args)
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(2)}, str(other / 'model.safetensors'))
    broken_plan = make_plan(other, [2], tmp_path / 'broken.json')
    with pytest.raises(ModelLoadError, match='cannot load a vision-language model from'):
        prune.main(args)
    assert not (tmp_path / 'out').exists()

    # no processor files: pruned anyway, with a log line
    args = verb_args(prune, ['--model', str(source), '--plan', str(plan_path),
                             '--out', str(tmp_path / 'out')])
    with caplog.at_level(logging.WARNING):
        assert prune.main(args) == 0
    assert 'no processor or tokenizer files' in caplog.text
    assert (tmp_path / 'out' / 'model.safetensors').is_file()


def test_model_defaults_to_the_embedded_model(monkeypatch, model_dir, tmp_path):
    from ros2_gmskip.argtypes import model_dir_or_default
    import ros2_gmskip.runtime.defaults as defaults
    assert model_dir_or_default(tmp_path) == tmp_path
    monkeypatch.setattr(defaults, 'default_model_dir', lambda: model_dir)
    assert model_dir_or_default(None) == model_dir
    monkeypatch.setattr(defaults, 'default_model_dir', lambda: tmp_path / 'missing')
    with pytest.raises(ModelLoadError, match='the default model .* is missing'):
        model_dir_or_default(None)


CALIBRATE = ['--data', 'val', '--n', '12', '--strategy', 'greedy', '--protect-first', '2',
             '--no-progress']


def test_calibrate_resume_after_interruption(fake_calibration, model_dir, tmp_path, capsys):
    from ros2_gmskip.verbs import calibrate
    whole, out = tmp_path / 'whole.json', tmp_path / 'plan.json'
    progress = tmp_path / 'plan.progress.json'
    assert calibrate.main(verb_args(calibrate, ['--model', str(model_dir), *CALIBRATE,
                                                '--out', str(whole)])) == 0
    assert not (tmp_path / 'whole.progress.json').exists()      # removed with the plan written
    FakeEvaluator.stop_after = 1 + 6 + 5 + 2                        # in greedy's third step
    with pytest.raises(KeyboardInterrupt):
        calibrate.main(verb_args(calibrate, ['--model', str(model_dir), *CALIBRATE,
                                             '--out', str(out)]))
    assert not out.exists()
    assert len(json.loads(progress.read_text())['scores']) == 1 + 6 + 5   # two whole steps
    FakeEvaluator.stop_after = None
    assert calibrate.main(verb_args(calibrate, ['--model', str(model_dir), *CALIBRATE,
                                                '--out', str(out), '--resume'])) == 0
    assert 'resuming: 12 scores' in capsys.readouterr().out
    assert FakeEvaluator.instances[-1].evaluations == 4 + 3 + 2 + 1      # only the rest
    a, b = load_plan(whole), load_plan(out)
    assert a.removed_blocks == b.removed_blocks and a.evaluations == b.evaluations
    assert [s.to_dict() for s in a.trajectory] == [s.to_dict() for s in b.trajectory]
    assert b.run['resumed_evaluations'] == 12 and b.run['engine'] == 'serial'
    assert a.run['resumed_evaluations'] == 0 and a.run['workers'] == 1
    assert not progress.exists()


def test_calibrate_resume_errors(fake_calibration, model_dir, tmp_path):
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    argv = ['--model', str(model_dir), *CALIBRATE, '--out', str(out)]
    with pytest.raises(PlanError, match='no progress file .*run without --resume'):
        calibrate.main(verb_args(calibrate, argv + ['--resume']))
    FakeEvaluator.stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        calibrate.main(verb_args(calibrate, argv))
    with pytest.raises(PlanError, match=r'other batch_size, n \(16, 12\)'):
        calibrate.main(verb_args(calibrate, argv + ['--resume', '--n', '7',
                                                    '--batch-size', '3']))
    (tmp_path / 'plan.progress.json').write_text('{"format": 1}')
    with pytest.raises(PlanError, match='unreadable'):
        calibrate.main(verb_args(calibrate, argv + ['--resume']))


def test_calibrate_ray_arguments(fake_calibration, model_dir, tmp_path, monkeypatch):
    from ros2_gmskip.verbs import calibrate
    argv = ['--model', str(model_dir), '--out', str(tmp_path / 'p.json')]
    with pytest.raises(PlanError, match='--workers 2: workers are Ray workers; add --ray'):
        calibrate.main(verb_args(calibrate, argv + ['--workers', '2']))
    assert verb_args(calibrate, argv + ['--ray']).ray == 'local'
    assert verb_args(calibrate, argv + ['--ray', '127.0.0.1:6379']).ray == '127.0.0.1:6379'
    monkeypatch.setitem(sys.modules, 'ray', None)               # ray not installed
    with pytest.raises(GmSkipError, match=r'--ray needs the optional dependency ray: pip '
                                          r"install 'ros2_gmskip\[ray\]'"):
        calibrate.main(verb_args(calibrate, argv + ['--ray']))
