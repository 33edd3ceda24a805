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
Store the weights of many graphs once: one file, every graph pointing into it (ONNX external data).

A plan-ladder bundle holds one decoder graph per rung, and the rungs share their blocks: every
initializer of at least `MIN_BYTES` is named by its content (`w.<sha256 prefix>`), written to
`weights.bin` once however many graphs use it, and each graph keeps an external-data reference
(location, offset, length) instead of the bytes. Two initializers of one graph with the same
content become one. Whoever reads the graphs follows the references: ONNX Runtime maps the
file's pages (mmap), so every session of every rung reads the same pages of the page cache;
onnx.load and TensorRT's ONNX parser read the bytes where they point.

    tensors, nbytes = share_weights(folder, ['decoder.rung0.onnx', 'decoder.rung1.onnx'])
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

from ros2_gmskip.bundle_format import WEIGHTS_FILE

MIN_BYTES = 1024            # smaller initializers (shapes, scalars, RoPE rows) stay in the graph
ALIGN = 4096                # every tensor starts on a page: ONNX Runtime maps it, not copies it
PREFIX = 'w.'


def _subgraph_nodes(graph) -> Iterator:
    """Yield every node of `graph`, and of the graphs in its nodes' attributes."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField('g') else []) + list(attr.graphs):
                yield from _subgraph_nodes(sub)


def share_weights(folder: Path, graphs: Sequence[str],
                  weights_file: str = WEIGHTS_FILE) -> tuple[int, int]:
    """
    Move the large initializers of `graphs` (files in `folder`) into `weights_file`, each once.

    Every graph is rewritten in place: its large initializers renamed to their content name
    (uses in its nodes follow) and stored as external data in `weights_file`. Return the
    number of distinct tensors written and their bytes.
    """
    import onnx
    from onnx import numpy_helper, TensorProto

    folder = Path(folder)
    table: dict[str, tuple[int, int]] = {}           # content name -> (offset, length)
    with open(folder / weights_file, 'wb') as out:
        for name in graphs:
            path = folder / name
            model = onnx.load(str(path))
            renames: dict[str, str] = {}
            kept = []
            for tensor in model.graph.initializer:
                # the bytes ONNX stores (packed types stay packed): raw_data, or the typed
                # fields' values serialised as raw_data would hold them
                data = tensor.raw_data or numpy_helper.from_array(
                    numpy_helper.to_array(tensor)).raw_data
                if len(data) < MIN_BYTES:
                    kept.append(tensor)
                    continue
                digest = hashlib.sha256(data)
                digest.update(f'{tensor.data_type}{list(tensor.dims)}'.encode())
                key = PREFIX + digest.hexdigest()[:24]
                renames[tensor.name] = key
                if key not in table:
                    pad = -out.tell() % ALIGN
                    out.write(b'\0' * pad)
                    table[key] = (out.tell(), len(data))
                    out.write(data)
                if any(t.name == key for t in kept):
                    continue                           # same content twice in this graph: one
                ref = TensorProto(name=key, data_type=tensor.data_type, dims=tensor.dims,
                                  data_location=TensorProto.EXTERNAL)
                for k, v in (('location', weights_file), ('offset', table[key][0]),
                             ('length', table[key][1])):
                    entry = ref.external_data.add()
                    entry.key, entry.value = k, str(v)
                kept.append(ref)
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
            for node in _subgraph_nodes(model.graph):
                for i, used in enumerate(node.input):
                    if used in renames:
                        node.input[i] = renames[used]
            for value in model.graph.input:            # old exporters list initializers here
                if value.name in renames:
                    value.name = renames[value.name]
            onnx.save(model, str(path))
    return len(table), sum(length for _, length in table.values())
