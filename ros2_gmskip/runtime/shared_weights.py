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
Hold a ladder bundle's shared weights once in memory, for every ONNX Runtime session.

The rung graphs point into one `weights.bin` (exporters/shared_weights.py). Left alone, ONNX
Runtime would read the file once per session, so a ladder of six rungs would hold most blocks
six times. Here the file is read once and every tensor handed to the sessions as a pre-made
initializer (`SessionOptions.add_initializer`): ONNX Runtime uses that memory instead of
reading its own copy, and ignores the names a graph does not have.

    weights = SharedWeights.load(bundle)        # None for a bundle without shared weights
    weights.add_to(options)                     # before creating the sessions
"""

from __future__ import annotations

import numpy as np
from ros2_gmskip.bundle_format import Bundle, REEXPORT, SharedTensor
from ros2_gmskip.errors import BundleError


class SharedWeights:
    """The shared weights file as numpy views of one buffer, by content name."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._values: list = []          # the OrtValues handed out: they must outlive sessions

    @classmethod
    def load(cls, bundle: Bundle) -> SharedWeights | None:
        """Read the bundle's weights file (hashed like every bundle file) into one buffer."""
        ladder = bundle.manifest.ladder
        if ladder is None:
            return None
        path = bundle.file(ladder.weights)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as err:
            raise BundleError(f'{bundle.where()}: {ladder.weights} unreadable ({err}): '
                              f'{REEXPORT}') from None
        return cls({name: _view(data, t, f'{bundle.where()}: {ladder.weights}')
                    for name, t in ladder.tensors.items()})

    def add_to(self, options) -> None:
        """Give every shared tensor to the sessions made with `options` (onnxruntime)."""
        from onnxruntime import OrtValue
        for name, array in self.arrays.items():
            value = OrtValue.ortvalue_from_numpy(array)
            self._values.append(value)
            options.add_initializer(name, value)

    @property
    def nbytes(self) -> int:
        """Return the bytes held."""
        return sum(a.nbytes for a in self.arrays.values())


def _view(data: np.ndarray, t: SharedTensor, where: str) -> np.ndarray:
    """Return tensor `t` as a view of the file's bytes; BundleError if it is not all there."""
    if t.offset < 0 or t.offset + t.nbytes > data.size:
        raise BundleError(f'{where} ends at byte {data.size}, a tensor lies at {t.offset}..'
                          f'{t.offset + t.nbytes} (truncated?): {REEXPORT}')
    dtype = np.dtype(t.dtype)
    if int(np.prod(t.shape, dtype=np.int64)) * dtype.itemsize != t.nbytes:
        raise BundleError(f'{where}: a tensor of {t.nbytes} bytes cannot be {t.dtype} '
                          f'{list(t.shape)}: {REEXPORT}')
    return data[t.offset:t.offset + t.nbytes].view(dtype).reshape(t.shape)
