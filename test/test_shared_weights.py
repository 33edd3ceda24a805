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

"""share_weights on small graphs: each weight stored once, graphs rewritten, values unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
from ros2_gmskip.exporters.shared_weights import ALIGN, MIN_BYTES, share_weights

RNG = np.random.default_rng(0)
SHARED = RNG.standard_normal((16, 16)).astype(np.float32)        # 1 KiB: moved out
OWN = RNG.standard_normal((16, 16)).astype(np.float32)
BIAS = RNG.standard_normal(16).astype(np.float32)                 # 64 bytes: stays inline


def _graph(path, weights: dict[str, np.ndarray]) -> None:
    """Write y = x @ w1 @ w2 ... + bias, the weights as initializers under the given names."""
    nodes, last = [], 'x'
    for i, name in enumerate(weights):
        nodes.append(helper.make_node('MatMul', [last, name], [f'h{i}']))
        last = f'h{i}'
    nodes.append(helper.make_node('Add', [last, 'bias'], ['y']))
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    inits.append(numpy_helper.from_array(BIAS, 'bias'))
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, [1, 16])], [helper.make_tensor_value_info(
            'y', TensorProto.FLOAT, [1, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)],
                                ir_version=9), str(path))


def _run(path, x):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(
        None, {'x': x})[0]


def test_each_weight_once_and_the_graphs_compute_the_same(tmp_path):
    _graph(tmp_path / 'a.onnx', {'layers.0.w': SHARED, 'layers.1.w': OWN})
    _graph(tmp_path / 'b.onnx', {'onnx::MatMul_7': SHARED, 'again': SHARED})   # twice in one
    x = RNG.standard_normal((1, 16)).astype(np.float32)
    before = [_run(tmp_path / n, x) for n in ('a.onnx', 'b.onnx')]

    tensors, nbytes = share_weights(tmp_path, ['a.onnx', 'b.onnx'])

    assert (tensors, nbytes) == (2, SHARED.nbytes + OWN.nbytes)
    size = (tmp_path / 'weights.bin').stat().st_size
    assert nbytes <= size < nbytes + ALIGN * tensors
    for name, want in zip(('a.onnx', 'b.onnx'), before):
        np.testing.assert_array_equal(_run(tmp_path / name, x), want)
        graph = onnx.load(str(tmp_path / name), load_external_data=False).graph
        external = [t for t in graph.initializer if t.data_location == TensorProto.EXTERNAL]
        assert all(t.name.startswith('w.') for t in external)
        assert [t.name for t in graph.initializer if t.data_location != TensorProto.EXTERNAL] \
            == ['bias'] and BIAS.nbytes < MIN_BYTES
    a = onnx.load(str(tmp_path / 'a.onnx'), load_external_data=False).graph
    b = onnx.load(str(tmp_path / 'b.onnx'), load_external_data=False).graph
    assert len(b.initializer) == 2                    # SHARED under two names became one
    assert b.node[0].input[1] == b.node[1].input[1] == a.node[0].input[1]   # one content name
    for t in a.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            where = {e.key: int(e.value) for e in t.external_data if e.key != 'location'}
            assert where['offset'] % ALIGN == 0
