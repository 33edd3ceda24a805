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
Run export bundles: backends behind one interface, the one decode loop, latency accounting.

Never imports torch or transformers (a test checks): the node must start fast on a Jetson with only
numpy, tokenizers, onnxruntime and (optionally) TensorRT. The torch reference backend lives in
`ros2_gmskip.vlm.torch_backend` and is only imported when asked for.
"""

from ros2_gmskip.runtime.results import Backend, BackendInfo, DEFAULT_PROMPT, Latency, Result

__all__ = ['Backend', 'BackendInfo', 'DEFAULT_PROMPT', 'Latency', 'Result']
