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
Lint exported graphs against the ONNX operators TensorRT 10's ONNX parser supports.

An op TensorRT cannot parse only shows up on the car, at `build-engine` time; this lint catches it
at export time, on any machine. The list is onnx-tensorrt's docs/operators.md (TensorRT 10.15,
opsets 9..24; its "Supported: Y" rows). The few ops that only arrived in 10.15 (LLM fusions:
Attention, RMSNormalization, RotaryEmbedding, TensorScatter) are held back by default, because
JetPack 6 ships TensorRT 10.3; our graphs never need them.

    unsupported = lint_graph('bundle/decoder.onnx')    # [] when TensorRT can parse every node
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TRT_VERSION = '10.15'
TRT_OPSET_RANGE = (9, 24)           # what that parser accepts
BUNDLE_OPSET_RANGE = (17, 20)       # what our bundles use: TensorRT 10.0..10.x all parse 9..20

# onnx-tensorrt docs/operators.md (TensorRT 10.15), rows marked "Y".
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero
Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Added in TensorRT 10.15 (its changelog): not parsed by the TensorRT 10.3 on JetPack 6.
NEW_IN_10_15 = frozenset({'Attention', 'RMSNormalization', 'RotaryEmbedding', 'TensorScatter'})

# Domains the parser reads as standard ONNX ops.
_ONNX_DOMAINS = ('', 'ai.onnx')


def supported_ops(include_new: bool = False) -> frozenset[str]:
    """Return the op types to accept: all TensorRT 10.15 parses, minus its newest by default."""
    return SUPPORTED_OPS if include_new else SUPPORTED_OPS - NEW_IN_10_15


def _op_counts(graph, counts: Counter) -> None:
    """Count `domain::op` (domain '' for ONNX) over a graph and its subgraphs (If/Loop/Scan)."""
    for node in graph.node:
        domain = '' if node.domain in _ONNX_DOMAINS else node.domain
        counts[f'{domain}::{node.op_type}' if domain else node.op_type] += 1
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _op_counts(attr.g, counts)
            for sub in attr.graphs:
                _op_counts(sub, counts)


def op_counts(path: Path) -> Counter:
    """How often each op type occurs in the graph at `path` (weights are not loaded)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()
    _op_counts(model.graph, counts)
    return counts


def graph_opset(path: Path) -> int:
    """Return the default-domain opset the graph at `path` declares."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in _ONNX_DOMAINS:
            return int(imp.version)
    raise ValueError(f'{path}: no ONNX opset import')


def lint_graph(path: Path, include_new: bool = False) -> list[str]:
    """
    Op types in the graph that TensorRT 10's ONNX parser does not support (sorted; [] = ok).

    Custom-domain ops (`com.microsoft::...`) are always reported: TensorRT needs a plugin for them.
    """
    allowed = supported_ops(include_new)
    return sorted(op for op in op_counts(Path(path)) if op not in allowed)


def check_opset(opset: int) -> str | None:
    """None if `opset` is in the range our bundles target, else the problem in words."""
    low, high = BUNDLE_OPSET_RANGE
    if low <= opset <= high:
        return None
    return f'opset {opset} is outside {low}..{high} (TensorRT 10.x parses up to 20)'
