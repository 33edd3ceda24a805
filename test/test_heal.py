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
`ros2-gmskip heal`: the pruned model fine-tuned with its token skipping on.

It is saved as a folder that loads with transformers and carries a plan for its own weights.
"""

from __future__ import annotations

import json

import pytest
from ros2_gmskip.cli import main


@pytest.fixture(scope='module')
def healed(tiny_model_dir, make_plan, tmp_path_factory):
    folder = tmp_path_factory.mktemp('heal')
    plan = make_plan(tiny_model_dir, [1, 3], folder / 'plan.json')
    out = folder / 'healed'
    rc = main(['heal', '--model', str(tiny_model_dir), '--plan', str(plan), '--out', str(out),
               '--fastv', '1,0.5', '--steps', '3', '--scenes', '8', '--batch-size', '4',
               '--val-n', '2', '--eval-every', '2', '--threads', '1',
               '--plot', str(folder / 'heal.png')])
    assert rc == 0
    assert (folder / 'heal.png').stat().st_size > 1000
    return tiny_model_dir, plan, out


def test_heal_writes_a_loadable_pruned_model_with_its_plan(healed):
    from ros2_gmskip.gmskip.plan import load_plan, plan_token_skip
    from ros2_gmskip.vlm.loading import load_vlm
    from safetensors.torch import load_file
    import torch
    source, plan, out = healed
    model, _ = load_vlm(out)
    assert len(model.model.language_model.layers) == 2
    healed_plan = load_plan(out / 'plans' / 'healed.json', model_dir=out)    # hash matches
    assert healed_plan.removed_blocks == [] and healed_plan.model.num_blocks == 2
    assert plan_token_skip(out / 'plans' / 'healed.json').describe() == 'FastV K=1 R=0.5'
    manifest = json.loads((out / 'gmskip_heal.json').read_text())
    assert manifest['format'] == 'ros2_gmskip/heal@1'
    assert manifest['plan']['removed_blocks'] == [1, 3]
    assert manifest['num_blocks'] == {'before': 4, 'after': 2}
    assert len(manifest['log']) == 3 and 'val_accuracy' in manifest['log'][1]
    assert manifest['val_accuracy']['n'] == 2
    assert (out / 'draft_ngrams.json').read_bytes() == (source / 'draft_ngrams.json').read_bytes()
    before = load_file(source / 'model.safetensors')
    after = load_file(out / 'model.safetensors')
    # kept blocks 0 and 2 became 0 and 1, and training moved them
    moved = [k for k in after if not torch.equal(
        after[k], before[k.replace('layers.1.', 'layers.2.')])]
    assert any('layers.1.' in k for k in moved) and any('vision_tower' in k for k in moved)


def test_heal_is_deterministic(healed, tmp_path):
    source, plan, out = healed
    again = tmp_path / 'again'
    assert main(['heal', '--model', str(source), '--plan', str(plan), '--out', str(again),
                 '--fastv', '1,0.5', '--steps', '3', '--scenes', '8', '--batch-size', '4',
                 '--val-n', '2', '--eval-every', '2', '--threads', '1']) == 0
    assert (again / 'model.safetensors').read_bytes() == (out / 'model.safetensors').read_bytes()


@pytest.mark.parametrize('extra, message', [
    (['--kv-removal', '0.5'], 'ratio 1 from layer 0 only'),
    ([], 'not empty'),
])
def test_heal_refuses_with_one_line(healed, capsys, extra, message):
    source, plan, out = healed
    assert main(['heal', '--model', str(source), '--plan', str(plan), '--out', str(out),
                 *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_heal_refuses_a_plan_for_other_weights(tiny_model_dir, make_plan, tmp_path, capsys):
    plan = make_plan(tiny_model_dir, [1], tmp_path / 'plan.json', sha256='0' * 64)
    assert main(['heal', '--model', str(tiny_model_dir), '--plan', str(plan), '--out',
                 str(tmp_path / 'out')]) == 1
    assert 're-run ros2-gmskip calibrate' in capsys.readouterr().err


def test_bench_runs_a_healed_model_against_the_full_one(healed, tmp_path, capsys):
    """
    Check bench --pruned-model runs the healed folder against the source model.

    *_pruned / *_combined run the healed folder as it is (its plan's token settings on
    *_combined only), *_full the source model; FLOPs come from each one's own depth.
    """
    from ros2_gmskip.tokenskip.flops import DecoderDims, generation_flops
    from ros2_gmskip.tokenskip.settings import FastVConfig
    source, _, out = healed
    rc = main(['bench', '--model', str(source), '--pruned-model', str(out), '--only',
               'torch_full', 'torch_pruned', 'torch_combined', '--n', '2', '--warmup', '0',
               '--threads', '1', '--max-new-tokens', '6', '--out-dir', str(tmp_path), '--json'])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = result['configs']
    assert result['pruned_model'] == str(out)
    assert cfg['torch_pruned']['tokens'] is None
    assert cfg['torch_combined']['tokens']['fastv'] == {'k': 1, 'r': 0.5, 'seed': 0}
    from ros2_gmskip.vlm.loading import load_vlm
    from ros2_gmskip.vlm.prompting import prompt_ids_of
    prompt = prompt_ids_of(load_vlm(source)[1])
    assert len(prompt) == 22
    config = json.loads((source / 'config.json').read_text())['text_config']
    for name, layers, fastv in (('torch_full', 4, None), ('torch_pruned', 2, None),
                                ('torch_combined', 2, FastVConfig(k=1, r=0.5))):
        dims = DecoderDims(layers=layers, hidden=config['hidden_size'],
                           ffn=config['intermediate_size'])
        expected = generation_flops(dims, 22, 16, max(1, round(cfg[name]['mean_tokens'])),
                                    fastv=fastv) / 1e9
        assert cfg[name]['gflops'] == pytest.approx(expected), name
    assert 'torch_combined_vs_torch_full' in result


def test_heal_finds_the_shipped_plan_however_the_model_path_is_spelled(tmp_path, capsys):
    """
    Check --model given as another path to the embedded model still finds its shipped plan.

    The plan check and the token check run before any training.
    """
    from ros2_gmskip.runtime.defaults import default_model_dir
    spelled = default_model_dir() / '..' / default_model_dir().name
    assert main(['heal', '--model', str(spelled), '--kv-removal', '0.5', '--out',
                 str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert 'ratio 1 from layer 0 only' in err and 'FastV K=1 R=0.5' in err
