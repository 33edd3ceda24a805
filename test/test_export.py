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

"""ONNX export: graphs, manifest, TensorRT lint, values vs PyTorch, plans, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, TensorProto
import pytest
from ros2_gmskip.bundle_format import FORMAT, load_bundle, sha256_file
from ros2_gmskip.errors import BundleError, ModelLoadError, PlanError
from ros2_gmskip.exporters import export_config as ec
from ros2_gmskip.exporters.trt_ops import check_opset, graph_opset, lint_graph, op_counts
import torch

torch.set_num_threads(1)


def _ort_session(path: Path):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


# --------------------------------------------------------------------------------------------------
# export config


def test_unsupported_family_names_the_supported_ones():
    with pytest.raises(ModelLoadError, match=r'export of qwen2_vl is not supported yet: '
                                             r'supported are gmskip_llava, llava'):
        ec.export_config_for({'model_type': 'qwen2_vl'})


def test_unsupported_decoder_and_opset(tiny_model):
    model, _ = tiny_model
    config = model.config.to_dict()
    config['text_config'] = dict(config['text_config'], model_type='gemma')
    with pytest.raises(ModelLoadError, match='gemma decoder is not supported yet'):
        ec.export_config_for(config)
    with pytest.raises(ModelLoadError, match='opset 16 is not supported: use 17..20'):
        ec.export_config_for(model.config, opset=16)


def test_export_config_specs(tiny_model):
    model, _ = tiny_model
    config = ec.export_config_for(model.config, num_layers=2)
    decoder = config.graphs['decoder']
    assert [s.name for s in decoder.inputs][:5] == [
        'inputs_embeds', 'attention_mask', 'position_ids', 'past_key_values.0.key',
        'past_key_values.0.value']
    assert [s.name for s in decoder.outputs] == [
        'logits', 'present.0.key', 'present.0.value', 'present.1.key', 'present.1.value']
    assert decoder.inputs[3].shape == ('batch', 2, 'past', 16)      # GQA: 2 KV heads
    assert decoder.outputs[1].shape == ('batch', 2, 'total', 16)
    assert config.graphs['vision'].outputs[0].shape == ('batch', 16, 64)
    assert decoder.outputs[0].atol == 1e-3
    [segment] = config.segments
    assert (segment.first, segment.stop, segment.last, segment.ranks) == (0, 2, True, False)
    split = ec.export_config_for(model.config, num_layers=4, splits=(1, 3), rank_at=1)
    assert [(s.first, s.stop, s.ranks, s.portable) for s in split.segments] == [
        (0, 1, True, 'decoder.onnx'), (1, 3, False, 'decoder.1.onnx'),
        (3, 4, False, 'decoder.2.onnx')]
    assert [o.name for o in split.graphs['decoder'].outputs][:2] == [
        'hidden_states', 'last_token_attention']
    assert split.graphs['decoder.2'].inputs[0].name == 'inputs_hidden'


# --------------------------------------------------------------------------------------------------
# the bundle


def test_bundle_files_and_manifest(tiny_bundle, tiny_model_dir):
    from ros2_gmskip.gmskip.plan import weights_sha256

    m = json.loads((tiny_bundle / 'manifest.json').read_text())
    assert m['format'] == FORMAT
    assert m['source_model'] == {'path': str(tiny_model_dir.resolve()),
                                 'sha256': weights_sha256(tiny_model_dir)}
    assert m['plan'] is None and m['opset'] == 17
    for name in ('vision.onnx', 'decoder.onnx', 'embed_tokens.npy', 'tokenizer.json',
                 'tokenizer_config.json', 'processor_config.json', 'chat_template.jinja',
                 'config.json', 'generation_config.json'):
        assert m['files'][name] == sha256_file(tiny_bundle / name), name
    assert sorted(p.name for p in tiny_bundle.iterdir()) == sorted([*m['files'], 'manifest.json'])
    assert [i['name'] for i in m['graphs']['vision']['inputs']] == ['pixel_values']
    assert m['graphs']['vision']['outputs'][0]['shape'] == ['batch', 16, 64]
    assert len(m['graphs']['decoder']['outputs']) == 1 + 2 * 4
    tokens = m['tokens']
    assert tokens['num_image_tokens'] == 16
    assert tokens['stop_token_ids'] == [tokens['eos_token_id']]
    assert tokens['prompt_template'] == '<image>' * 16 + '{prompt}<sep>'
    assert m['preprocess'] == {'size': [64, 64], 'resample': 'bilinear',
                               'rescale_factor': pytest.approx(1 / 255),
                               'image_mean': [0.5] * 3, 'image_std': [0.5] * 3}
    assert m['decoder'] == {'num_layers': 4, 'num_heads': 4, 'num_kv_heads': 2,
                            'head_dim': 16, 'hidden_size': 64,
                            'vocab_size': m['decoder']['vocab_size'],
                            'rope_theta': 10000.0, 'family': 'llava', 'decoder_type': 'llama'}
    assert m['token_skip'] is None and m['draft'] == 'draft_ngrams.json'
    assert m['segments'] == [{'first': 0, 'stop': 4, 'last': True, 'ranks': False,
                              'portable': 'decoder.onnx', 'fused': 'decoder.fused.onnx',
                              'fused_prefill': None, 'fused_step': None}]
    assert m['fused']['positions'] == 'cache' and m['fused']['step_weights'] == 'fp32'
    v = m['validation']
    assert v['passed'] and v['identical_text'] == '3/3' and v['tolerance'] == 1e-3
    assert 0 <= v['max_abs_logit_diff'] <= 1e-4
    assert all(line.startswith('✓') for line in v['checks'])
    assert set(m['versions']) == {'torch', 'transformers', 'onnx', 'onnxruntime', 'ros2_gmskip'}
    embed = np.load(tiny_bundle / 'embed_tokens.npy')
    assert embed.dtype == np.float32 and embed.shape == (m['decoder']['vocab_size'], 64)
    assert load_bundle(tiny_bundle).manifest.decoder.num_layers == 4


def test_graphs_pass_checker_and_tensorrt_lint(tiny_bundle):
    for name in ('vision.onnx', 'decoder.onnx'):
        path = tiny_bundle / name
        onnx.checker.check_model(str(path), full_check=True)
        assert lint_graph(path) == [], name
        assert graph_opset(path) == 17
        model = onnx.load(str(path))
        external = [t.name for t in model.graph.initializer
                    if t.data_location == TensorProto.EXTERNAL]
        assert not external, f'{name} is not self-contained: {external[:3]}'
    ops = op_counts(tiny_bundle / 'decoder.onnx')
    assert ops['Softmax'] == 4 and 'If' not in ops and 'Loop' not in ops


def test_dynamic_axes_are_named(tiny_bundle):
    session = _ort_session(tiny_bundle / 'decoder.onnx')
    shapes = {i.name: i.shape for i in [*session.get_inputs(), *session.get_outputs()]}
    assert shapes['inputs_embeds'] == ['batch', 'seq', 64]
    assert shapes['attention_mask'] == ['batch', 'total']
    assert shapes['past_key_values.3.value'] == ['batch', 2, 'past', 16]
    assert shapes['present.0.key'] == ['batch', 2, 'total', 16]
    assert shapes['logits'][:2] == ['batch', 'seq']
    vision = _ort_session(tiny_bundle / 'vision.onnx')
    assert vision.get_inputs()[0].shape == ['batch', 3, 64, 64]


@torch.no_grad()
def test_ort_logits_match_torch_prefill_and_step(tiny_bundle, tiny_model, scene_images):
    """Independent of the exporter's own validation: batch 2 (two images), prefill + one step."""
    from ros2_gmskip.vlm.prompting import build_inputs

    model, processor = tiny_model
    inputs = build_inputs(processor, scene_images[:2])
    ids = inputs['input_ids']                                          # (2, T)
    B, T = ids.shape
    ref = model(**inputs, use_cache=True)
    vision = _ort_session(tiny_bundle / 'vision.onnx')
    decoder = _ort_session(tiny_bundle / 'decoder.onnx')
    image_embeds = vision.run(None, {'pixel_values': inputs['pixel_values'].numpy()})[0]
    table = np.load(tiny_bundle / 'embed_tokens.npy')
    embeds = table[ids.numpy()]
    embeds[ids.numpy() == model.config.image_token_id] = image_embeds.reshape(-1, 64)
    feed = {'inputs_embeds': embeds, 'attention_mask': np.ones((B, T), np.int64),
            'position_ids': np.tile(np.arange(T), (B, 1))}
    for i in range(4):
        for kind in ('key', 'value'):
            feed[f'past_key_values.{i}.{kind}'] = np.zeros((B, 2, 0, 16), np.float32)
    out = decoder.run(None, feed)
    assert np.abs(out[0] - ref.logits.numpy()).max() < 1e-3
    assert np.abs(out[1] - ref.past_key_values.layers[0].keys.numpy()).max() < 1e-4
    nxt = ref.logits[:, -1].argmax(-1)                                 # (B,)
    step_ref = model(input_ids=nxt[:, None], attention_mask=torch.ones(B, T + 1, dtype=torch.long),
                     past_key_values=ref.past_key_values, use_cache=True)
    feed = {'inputs_embeds': table[nxt.numpy()][:, None],
            'attention_mask': np.ones((B, T + 1), np.int64), 'position_ids': np.full((B, 1), T)}
    for i in range(4):
        feed[f'past_key_values.{i}.key'] = out[1 + 2 * i]
        feed[f'past_key_values.{i}.value'] = out[2 + 2 * i]
    step = decoder.run(None, feed)
    assert np.abs(step[0] - step_ref.logits.numpy()).max() < 1e-3
    assert step[-1].shape == (B, 2, T + 1, 16)


def test_export_with_plan_has_fewer_blocks(tiny_pruned_bundle, tiny_bundle):
    m = json.loads((tiny_pruned_bundle / 'manifest.json').read_text())
    assert m['plan']['removed_blocks'] == [1, 3] and m['plan']['stack'] == 'decoder'
    assert m['plan']['sha256'] == sha256_file(Path(m['plan']['path']))
    assert len(m['plan']['plan_id']) == 12
    assert m['decoder']['num_layers'] == 2
    assert m['validation']['passed'] and m['validation']['identical_text'] == '3/3'
    pruned = [o.name for o in _ort_session(tiny_pruned_bundle / 'decoder.onnx').get_outputs()]
    full = [o.name for o in _ort_session(tiny_bundle / 'decoder.onnx').get_outputs()]
    assert pruned == ['logits', 'present.0.key', 'present.0.value', 'present.1.key',
                      'present.1.value']
    assert len(pruned) == len(full) - 4
    assert (tiny_pruned_bundle / 'decoder.onnx').stat().st_size < \
        0.7 * (tiny_bundle / 'decoder.onnx').stat().st_size


def test_pruned_bundle_matches_pruned_torch_model(tiny_pruned_bundle, tiny_model_dir,
                                                  scene_images):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.vlm.torch_backend import TorchBackend

    plan = Path(json.loads((tiny_pruned_bundle / 'manifest.json').read_text())['plan']['path'])
    ort_backend = OrtBackend(tiny_pruned_bundle, threads=1)
    torch_backend = TorchBackend(tiny_model_dir, plan=plan, threads=1)
    assert torch_backend.info.blocks_removed == ort_backend.info.blocks_removed == (1, 3)
    for key in ('plan_id', 'model_id', 'num_layers'):
        assert getattr(torch_backend.info, key) == getattr(ort_backend.info, key), key
    for image in scene_images[:2]:
        assert ort_backend.describe(image, max_new_tokens=8).text == \
            torch_backend.describe(image, max_new_tokens=8).text


def test_plan_for_other_weights_is_refused(tiny_model_dir, tmp_path, make_plan):
    from ros2_gmskip.exporters.onnx_export import export_bundle

    plan = make_plan(tiny_model_dir, [1], tmp_path / 'plan.json', sha256='0' * 64)
    with pytest.raises(PlanError, match='made for model sha256 000000000000'):
        export_bundle(tiny_model_dir, tmp_path / 'out', plan=plan, validate_n=0)
    assert not (tmp_path / 'out').exists()


def test_out_folder_that_is_not_a_bundle_is_refused(tiny_model_dir, tmp_path):
    from ros2_gmskip.exporters.onnx_export import export_bundle

    out = tmp_path / 'out'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(BundleError, match='non-empty folder that is not a bundle'):
        export_bundle(tiny_model_dir, out, validate_n=0)
    assert sorted(p.name for p in out.iterdir()) == ['notes.txt']


def test_failed_validation_lists_every_failure_and_writes_nothing(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    import dataclasses

    from ros2_gmskip.exporters import onnx_export

    def strict(*args, **kwargs):            # a KV tolerance no difference can meet
        return dataclasses.replace(ec.export_config_for(*args, **kwargs), kv_atol=-1.0)

    monkeypatch.setattr(onnx_export, 'export_config_for', strict)
    lines = []
    with pytest.raises(BundleError, match=r'export validation failed \(9 of \d+ checks\): '
                                          r'present.0.key: .*present.3.value: .*bundle not '
                                          r'written'):
        onnx_export.export_bundle(tiny_model_dir, tmp_path / 'out', validate_n=1,
                                  max_new_tokens=4, threads=1,
                                  on_check=lambda c: lines.append(c.line()))
    assert not (tmp_path / 'out').exists()
    assert not list(tmp_path.iterdir())                         # temp folder removed too
    assert sum(line.startswith('✗') for line in lines) == 9   # 8 present.* + the fused KV rows
    assert any(line.startswith('✗ fused decoder present') for line in lines)
    assert any(line.startswith('✓ greedy text') for line in lines)   # ran after the failures
    assert any(line.startswith('✓ fused decoder greedy text') for line in lines)


def test_existing_bundle_is_replaced_and_cli_prints_checks(tiny_model_dir, tmp_path, capsys):
    from ros2_gmskip import cli

    out = tmp_path / 'bundle'
    args = ['export', '--model', str(tiny_model_dir), '--out', str(out), '--validate-n', '1',
            '--max-new-tokens', '4', '--threads', '1']
    assert cli.main(args) == 0
    first = json.loads((out / 'manifest.json').read_text())
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert '✓ logits: max |onnx - torch|' in printed and '✗' not in printed
    assert '✓ greedy text: 1/1 test scenes identical' in printed
    assert 'validation: ' in printed and 'checks passed' in printed
    assert json.loads((out / 'manifest.json').read_text())['files'] == first['files']
    assert [p.name for p in tmp_path.iterdir()] == ['bundle']     # no leftovers


def test_cli_error_is_one_line(tmp_path, capsys):
    from ros2_gmskip import cli

    model = tmp_path / 'model'
    model.mkdir()
    (model / 'config.json').write_text(json.dumps({'model_type': 'llava'}))
    assert cli.main(['export', '--model', str(model), '--out', str(tmp_path / 'b')]) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: model folder') and err.count('\n') == 1


# --------------------------------------------------------------------------------------------------
# TensorRT op lint


def _graph_with(path: Path, nodes, opset: int = 17) -> Path:
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, 'g', [x], [y])
    imports = [helper.make_opsetid('', opset), helper.make_opsetid('com.microsoft', 1)]
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    return path


def test_lint_reports_unsupported_and_custom_ops(tmp_path):
    path = _graph_with(tmp_path / 'g.onnx', [
        helper.make_node('Relu', ['x'], ['a']),
        helper.make_node('Unique', ['a'], ['b']),
        helper.make_node('FusedMatMul', ['b', 'b'], ['c'], domain='com.microsoft'),
        helper.make_node('Identity', ['c'], ['y'])])
    assert lint_graph(path) == ['Unique', 'com.microsoft::FusedMatMul']
    clean = _graph_with(tmp_path / 'ok.onnx', [helper.make_node('Relu', ['x'], ['y'])])
    assert lint_graph(clean) == []


def test_lint_holds_back_ops_newer_than_jetpack_tensorrt(tmp_path):
    path = _graph_with(tmp_path / 'g.onnx', [helper.make_node('RotaryEmbedding', ['x'], ['y'])])
    assert lint_graph(path) == ['RotaryEmbedding']
    assert lint_graph(path, include_new=True) == []


def test_lint_looks_inside_subgraphs(tmp_path):
    then = helper.make_graph([helper.make_node('Unique', ['x'], ['t'])], 'then', [],
                             [helper.make_tensor_value_info('t', TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node('Relu', ['x'], ['e'])], 'else', [],
                              [helper.make_tensor_value_info('e', TensorProto.FLOAT, None)])
    path = _graph_with(tmp_path / 'g.onnx', [
        helper.make_node('Constant', [], ['c'],
                         value=helper.make_tensor('v', TensorProto.BOOL, [], [True])),
        helper.make_node('If', ['c'], ['y'], then_branch=then, else_branch=other)])
    assert lint_graph(path) == ['Unique']


def test_opset_range():
    assert check_opset(17) is None and check_opset(20) is None
    assert 'outside 17..20' in check_opset(16)
    assert 'outside 17..20' in check_opset(21)
